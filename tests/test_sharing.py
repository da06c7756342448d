"""One model's weights for many sessions: views share the memory and nothing else, and
explainers on views in concurrent threads give the maps one explainer gives, leaving
the model as it was."""

from __future__ import annotations

import threading

import numpy as np
import torch
import torchvision
from conftest import ModelState

from camwidget import Explainer
from camwidget.sharing import shared_view


def test_a_view_shares_the_weights_and_nothing_else():
    resnet18 = torchvision.models.resnet18().eval()  # its own: the view changes it below
    before = ModelState.of(resnet18)
    view = shared_view(resnet18)
    pairs = list(zip(resnet18.parameters(), view.parameters(), strict=True))
    assert all(a.data_ptr() == b.data_ptr() and a is not b for a, b in pairs)
    buffers = zip(resnet18.buffers(), view.buffers(), strict=True)
    assert all(a.data_ptr() == b.data_ptr() for a, b in buffers)
    view.train()
    for parameter in view.parameters():
        parameter.requires_grad_(False)
    view.layer4.register_forward_hook(lambda *args: None)
    view.eval()(torch.zeros(1, 3, 64, 64)).sum()
    view.train()
    before.assert_same(resnet18)  # its mode, switches, hooks and grads are its own
    view(torch.zeros(2, 3, 64, 64))  # a training pass updates the batch-norm statistics:
    assert not torch.equal(resnet18.bn1.running_var, before.tensors["bn1.running_var"])


def test_explainers_on_views_in_threads_agree_with_one_explainer(resnet18, photo):
    before = ModelState.of(resnet18)
    classes = (281, 285, 1, 7)
    expected = {c: Explainer(resnet18).explain(photo, "layer3", c).raw for c in classes}
    got: dict[int, list[np.ndarray]] = {c: [] for c in classes}

    def student(target: int) -> None:
        explainer = Explainer(shared_view(resnet18))
        for _ in range(3):
            got[target].append(explainer.explain(photo, "layer3", target).raw)
            explainer.clear()  # each time a forward and a backward again

    threads = [threading.Thread(target=student, args=(c,)) for c in classes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for target in classes:
        assert len(got[target]) == 3
        for raw in got[target]:
            np.testing.assert_allclose(raw, expected[target], rtol=1e-5, atol=1e-7)
    before.assert_same(resnet18)
