"""Maps in every layout: channels-first, channels-last, tokens, and the user's reshape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camwidget import CamwidgetError, Explainer
from camwidget.layouts import Layout, find

SQUARE = (224, 224)


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((1, 64, 56, 56), SQUARE, Layout("nchw", (56, 56))),
        ((1, 512, 19, 16), (600, 512), Layout("nchw", (19, 16))),
        ((1, 2048, 1, 1), (32, 32), Layout("nchw", (1, 1))),  # a tiny input, stride 32
        ((1, 7, 7, 768), SQUARE, Layout("nhwc", (7, 7))),
        ((1, 56, 56, 96), SQUARE, Layout("nhwc", (56, 56))),
        ((1, 196, 768), SQUARE, Layout("tokens", (14, 14))),  # no class token (Mixer)
        ((1, 197, 192), SQUARE, Layout("tokens", (14, 14), 1)),  # class token
        ((1, 198, 192), SQUARE, Layout("tokens", (14, 14), 2)),  # + distillation token
        ((1, 201, 192), SQUARE, Layout("tokens", (14, 14), 5)),  # + 4 registers
        ((1, 16, 384), SQUARE, Layout("tokens", (4, 4))),  # LeViT's last stage
        ((1, 280, 192), (224, 320), Layout("tokens", (14, 20))),  # the input's aspect
        ((2, 50, 64), SQUARE, Layout("tokens", (7, 7), 1)),
    ],
)
def test_layouts_found(shape, size, expected):
    assert find(shape, size, shape[0]) == expected


@pytest.mark.parametrize(
    ("shape", "why"),
    [
        ((1, 3, 197, 197), "lies on no grid"),  # an attention matrix
        ((1, 3, 197, 64), "lies on no grid"),  # per-head queries
        ((1, 512, 1, 1), "lies on no grid"),  # a squeeze-and-excitation gate
        ((64, 49, 96), "not the batch"),  # Swin's windows
        ((1, 768, 196), "not (N, T, C) tokens"),  # Mixer's transposed token mixing
        ((1, 1000), "3 or 4"),
    ],
)
def test_not_maps(shape, why):
    assert why in find(shape, SQUARE, 1)


def test_to_nchw_reads_every_layout_as_the_same_map():
    nchw = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    nhwc = nchw.permute(0, 2, 3, 1)
    tokens = torch.cat([torch.full((2, 2, 3), -1.0), nhwc.reshape(2, 20, 3)], dim=1)
    for layout, tensor in [
        (Layout("nchw", (4, 5)), nchw),
        (Layout("nhwc", (4, 5)), nhwc),
        (Layout("tokens", (4, 5), 2), tokens),
    ]:
        assert torch.equal(layout.to_nchw(tensor), nchw)


class TinyViT(nn.Module):
    """Patch embedding, a class token, one attention-free mixing block, a head that
    reads the class token."""

    def __init__(self, dim=8, patch=4, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        mixed = self.mix(self.norm1(tokens))
        tokens = tokens + mixed.mean(dim=1, keepdim=True) + mixed  # the class token mixes
        return self.head(self.norm(tokens)[:, 0])


def grad_cam_by_hand(model, x, module, target, to_nchw):
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        logits = model(x[None])
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(logits[0, target], store["a"])
    a, g = to_nchw(store["a"].detach())[0], to_nchw(g)[0]
    return torch.relu((g.mean(dim=(1, 2))[:, None, None] * a).sum(0)).numpy()


def test_a_token_model_is_explained_at_its_token_layers():
    model = TinyViT().eval()
    x = torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(1))
    ex = Explainer(model)
    e = ex.explain(x, layer="norm1", target=2)
    info = ex.layer("norm1")
    assert (info.layout, info.shape) == ("tokens", (8, 8, 12))
    assert info.label == "norm1 · LayerNorm · tokens · 8×8×12"

    def drop_class_token(t):
        return t[:, 1:].reshape(1, 8, 12, 8).permute(0, 3, 1, 2)

    expected = grad_cam_by_hand(model, x, model.norm1, 2, drop_class_token)
    np.testing.assert_allclose(e.raw, expected, rtol=1e-5, atol=1e-7)
    assert e.heatmap.shape == (32, 48)
    # the last layers on the grid reach the logits through the class token only
    assert ex.default_layer == "mix"


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = nn.LayerNorm(8)  # applied to (N, H, W, C)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.norm(self.conv(x).permute(0, 2, 3, 1))
        return self.fc(x.mean(dim=(1, 2)))


def test_a_channels_last_map_is_explained():
    model = ChannelsLast().eval()
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(2))
    ex = Explainer(model)
    ex.explain(x)  # the catalogue follows the image's size
    assert [(i.name, i.layout, i.shape) for i in ex.layers] == [
        ("conv", "nchw", (8, 8, 8)),
        ("norm", "nhwc", (8, 8, 8)),
    ]
    e = ex.explain(x, layer="norm", target=1)
    expected = grad_cam_by_hand(model, x, model.norm, 1, lambda t: t.permute(0, 3, 1, 2))
    np.testing.assert_allclose(e.raw, expected, rtol=1e-5, atol=1e-7)
    assert ex.layer("norm").cam  # GAP over the channels-last grid, then the classifier
    cam = ex.explain(x, layer="norm", target=1, method="cam")
    assert cam.raw.mean() + model.fc.bias[1].item() == pytest.approx(cam.score, rel=1e-5)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        return self.fc((x * self.gate(x)).mean(dim=(2, 3)))


def test_a_gate_is_not_offered_and_says_why():
    ex = Explainer(Gated())
    assert [layer.name for layer in ex.layers] == ["conv"]
    with pytest.raises(CamwidgetError, match=r"'gate' is not offered: its output \(1, 4, 1, 1\)"):
        ex.explain(np.zeros((96, 96, 3), np.uint8), layer="gate")


class Mixer(nn.Module):
    """Tokens in an order camwidget cannot guess: (N, C, T)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 6, 8, stride=8)
        self.tokens = nn.Linear(16, 16)  # mixes along T, on (N, C, T)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        mixed = self.tokens(self.embed(x).flatten(2))  # (N, C=6, T=16)
        return self.head(mixed.mean(dim=2))


def test_a_reshape_given_by_the_user():
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
    plain = Explainer(Mixer())
    plain.explain(x)  # the model takes 32×32 only
    with pytest.raises(CamwidgetError, match=r"'tokens' is not offered: .*not \(N, T, C\) tokens"):
        plain.layer("tokens")

    def channels_first_tokens(t):
        return t.reshape(t.shape[0], t.shape[1], 4, 4)

    model = Mixer().eval()
    ex = Explainer(model, reshape={"tokens": channels_first_tokens})
    ex.explain(x)
    info = ex.layer("tokens")
    assert (info.layout, info.shape) == ("custom", (6, 4, 4))
    e = ex.explain(x, layer="tokens", target=1)
    expected = grad_cam_by_hand(model, x, model.tokens, 1, channels_first_tokens)
    np.testing.assert_allclose(e.raw, expected, rtol=1e-5, atol=1e-7)
    bad = Explainer(Mixer(), reshape={"tokens": lambda t: t})
    with pytest.raises(CamwidgetError, match="reshape given for layer 'tokens' must return"):
        bad.explain(x)
