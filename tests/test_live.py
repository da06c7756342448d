"""Never freeze: work started from the page runs beside the kernel, can be cancelled,
tells its progress, and Python reads wait for it."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from conftest import ModelState, assert_page_shows

from camwidget import CAMWidget, Explainer, passes, render, samples, zoo
from camwidget.worker import Cancelled, Job, Worker


@pytest.fixture(scope="module")
def lite0():
    return zoo.load("efficientnet_lite0")


@pytest.fixture
def panel(lite0):
    model, preprocess, labels = lite0
    widget = CAMWidget(
        copy.deepcopy(model), samples.load("chelsea"), preprocess=preprocess, labels=labels
    )
    yield widget
    widget.close()


class Gate:
    """Holds the model's batched passes (Score-CAM, Ablation-CAM) until released,
    after letting the first ``after`` of them through."""

    def __init__(self, model: torch.nn.Module, after: int = 0) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.handle = model.register_forward_pre_hook(self._hold)
        self.left = after

    def _hold(self, module, args):
        if args[0].shape[0] > 1:
            self.left -= 1
            if self.left >= 0:
                return
            self.entered.set()
            assert self.release.wait(60), "the gate was never released"

    def remove(self) -> None:
        self.release.set()
        self.handle.remove()


def choose(panel, name, value):
    """A choice made in the page's dropdown, as the front end sends it."""
    control = panel.controls[name]
    values = [option[1] if isinstance(option, tuple) else option for option in control.options]
    control.set_state({"index": values.index(value)})


def worker_threads():
    return [t for t in threading.enumerate() if t.name == "camwidget-panel"]


def test_jobs_run_in_order_and_stop_when_cancelled():
    worker, seen = Worker("camwidget-test"), []
    first_started, go_on = threading.Event(), threading.Event()

    def slow(job):
        first_started.set()
        for step in range(1, 101):
            go_on.wait(5)
            job.progress(step, 100)
            seen.append(step)

    first = worker.submit(Job(slow, "slow"))
    second = worker.submit(Job(lambda job: seen.append("second"), "quick"))
    assert first_started.wait(5)
    first.cancel()
    go_on.set()
    assert worker.wait(10)
    assert isinstance(first.error, Cancelled) and seen == ["second"]  # stopped at once
    failing = worker.submit(Job(lambda job: 1 / 0))
    assert worker.wait(10) and isinstance(failing.error, ZeroDivisionError)
    assert second.error is None and first.describe().startswith("slow · 0 %")
    worker.close()
    assert not [t for t in threading.enumerate() if t.name == "camwidget-test"]


def test_a_cancelled_scorecam_leaves_model_and_caches_as_before(lite0):
    model = copy.deepcopy(lite0[0]).train()
    ex = Explainer(model, lite0[1], scorecam_channels=64, scorecam_batch_size=8)
    photo = samples.load("chelsea")
    ex.explain(photo, "blocks.15")  # Grad-CAM: the pass and gradients are kept
    before, passes = ModelState.of(model), dict(ex.passes)
    calls = []

    def stop_after_two_batches(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise Cancelled("superseded")

    with pytest.raises(Cancelled):
        ex.explain(photo, "blocks.15", method="scorecam", progress=stop_after_two_batches)
    before.assert_same(model)  # weights, training flags, requires_grad, no hook left
    assert calls == [8, 16] and ex.passes["scored"] == passes.get("scored", 0) + 16
    e = ex.explain(photo, "blocks.15", method="scorecam")  # nothing partial was cached
    assert ex.passes["scored"] == passes.get("scored", 0) + 16 + 64
    assert ex.passes["forward"] == passes["forward"]  # the kept pass served both
    one_shot = Explainer(copy.deepcopy(model).eval(), lite0[1], scorecam_channels=64)
    np.testing.assert_allclose(
        e.raw, one_shot.explain(photo, "blocks.15", method="scorecam").raw, atol=1e-6
    )


def test_the_page_stays_live_while_scorecam_runs(panel):
    panel.explainer.scorecam_batch_size = 8
    panel.layer = "blocks.15"
    gradcam_frame = panel.main_view.frame.copy()
    gate = Gate(panel.explainer.model)
    try:
        choose(panel, "method", "scorecam")  # returns at once: the work runs beside
        assert gate.entered.wait(30)
        status = panel.controls["status"].value
        assert "Score-CAM running</b> · showing" in status and "Grad-CAM" in status
        assert "Grad-CAM at" in panel.main_view.caption.value  # the caption: what is shown
        bundles = []  # Jupyter asks for the static picture after each message: no waiting
        asked = threading.Thread(target=lambda: bundles.append(panel._repr_mimebundle_()))
        asked.start()
        asked.join(10)
        assert bundles and "Grad-CAM" in bundles[0]["text/plain"]
        choose(panel, "colormap", "magma")  # a look change is served at once
        view = panel.main_view
        magma = render.blend(view.rgb, view.heat, "magma", panel.alpha, panel.threshold)
        assert_page_shows(view, magma)
        assert not np.array_equal(magma, gradcam_frame)
        choose(panel, "method", "gradcam")  # supersedes Score-CAM; shown before it stops
        assert panel.main_view.explanation.method == "gradcam" and gate.entered.is_set()
        assert "running" not in panel.controls["status"].value
        assert panel.controls["work"].layout.display == "none"
        gate.release.set()
        assert panel.wait(30)
    finally:
        gate.remove()
    assert panel.explanation.method == "gradcam" and panel.colormap == "magma"
    assert "running" not in panel.controls["status"].value
    assert panel.controls["work"].layout.display == "none"
    scored = panel.explainer.passes["scored"]
    assert 0 < scored < 80  # dropped within a few batches of Score-CAM's 80 channels
    panel.method = "scorecam"  # nothing partial was cached: Score-CAM runs in full
    assert panel.explainer.passes["scored"] - scored >= 79


def test_scorecam_shows_its_map_as_it_is_made(lite0):
    model, preprocess, labels = lite0
    photo, layer = samples.load("chelsea"), "blocks.7.project.conv"  # 80 channels
    ex = Explainer(model, preprocess, labels, scorecam_batch_size=16)
    frames = []
    e = ex.explain(photo, layer, method="scorecam", preview=lambda *frame: frames.append(frame))
    assert [fraction for _, fraction in frames] == [0.2, 0.4, 0.6, 0.8, 1.0]
    np.testing.assert_allclose(frames[-1][0].numpy(), e.raw, atol=1e-6)  # the last is final
    alone = Explainer(model, preprocess, labels, scorecam_batch_size=16)
    np.testing.assert_array_equal(e.raw, alone.explain(photo, layer, method="scorecam").raw)
    likeness = [np.corrcoef(raw.numpy().ravel(), e.raw.ravel())[0, 1] for raw, _ in frames]
    assert likeness[1] > 0.9  # at 40 % the preview already looks like the final map


def test_the_panel_paints_a_partial_map_and_says_so(panel):
    panel.explainer.scorecam_batch_size = 8
    panel.layer = "blocks.15"
    gate = Gate(panel.explainer.model, after=1)  # one batch of 8 channels, then hold
    try:
        choose(panel, "method", "scorecam")
        assert gate.entered.wait(30)
        view = panel.main_view
        assert "Score-CAM at blocks.15 · partial: 2 %" in view.caption.value  # 8 of 320
        status = panel.controls["status"].value
        assert "Score-CAM running</b> · showing Score-CAM at blocks.15 · partial" in status
        partial_frame = view.frame.copy()
        choose(panel, "colormap", "magma")  # the partial map takes a look change too
        magma = render.blend(view.rgb, view.heat, "magma", panel.alpha, panel.threshold)
        assert_page_shows(view, magma)
        assert not np.array_equal(magma, partial_frame)
        assert "partial" in panel.controls["status"].value and "magma" in (
            panel.controls["status"].value
        )
        gate.release.set()
        assert panel.wait(60)
    finally:
        gate.remove()
    assert view.partial is None and "partial" not in view.caption.value
    assert "Score-CAM at <code>blocks.15</code>" in view.caption.value
    assert "running" not in panel.controls["status"].value


def test_reads_wait_for_the_page_work(panel, lite0):
    panel.explainer.scorecam_channels = 16
    choose(panel, "method", "scorecam")
    heatmap = panel.heatmap  # waits
    ex = Explainer(lite0[0], lite0[1], scorecam_channels=16)
    e = ex.explain(samples.load("chelsea"), panel.layer, panel.target, "scorecam")
    np.testing.assert_array_equal(heatmap, e.heatmap)
    assert panel.explanation.method == "scorecam"
    assert "Score-CAM" in panel.controls["status"].value and "running" not in (
        panel.controls["status"].value
    )


def test_progress_tells_what_runs_and_cancel_keeps_what_is_shown(panel):
    panel.explainer.scorecam_batch_size = 8
    panel.layer = "blocks.15"
    gate = Gate(panel.explainer.model)
    texts, told = [], threading.Event()

    def heard(change):
        texts.append(change["new"])
        told.set()

    panel.controls["progress_text"].observe(heard, "value")
    try:
        choose(panel, "method", "scorecam")
        assert gate.entered.wait(30)
        gate.release.set()
        assert told.wait(30)  # the first batch is done and told
        panel.controls["cancel"].click()
        assert panel.wait(30)
    finally:
        gate.remove()
    assert texts and texts[0].startswith("Score-CAM · ") and "%" in texts[0]
    assert panel.method == "gradcam" and panel.controls["method"].value == "gradcam"
    assert panel.explanation.method == "gradcam"
    assert "cancelled" in panel.controls["messages"].value


def test_errors_in_the_worker_reach_the_panel(panel, monkeypatch):
    explain = panel.explainer.explain

    def failing(image, layer=None, target=None, method="gradcam", **kwargs):
        if method == "hirescam":
            raise RuntimeError("the GPU caught fire")
        return explain(image, layer, target, method, **kwargs)

    monkeypatch.setattr(panel.explainer, "explain", failing)
    choose(panel, "method", "hirescam")
    assert panel.wait(30)
    message = panel.controls["messages"].value
    assert "RuntimeError: the GPU caught fire" in message and "#b00020" in message
    choose(panel, "method", "layercam")  # and the panel keeps working
    assert panel.explanation.method == "layercam"


def test_close_leaves_no_thread(lite0):
    model, preprocess, labels = lite0
    panel = CAMWidget(model, samples.load("chelsea"), preprocess=preprocess, labels=labels)
    choose(panel, "method", "gradcam++")
    assert panel.wait(30) and worker_threads()
    panel.close()
    assert not worker_threads()


def test_two_panels_on_one_explainer_give_the_maps_of_one(lite0):
    model, preprocess, labels = lite0
    ex = Explainer(copy.deepcopy(model), preprocess, labels)
    first = CAMWidget(ex, samples.load("chelsea"))
    second = CAMWidget(ex, samples.load("chelsea"))
    try:
        for panel, layer in ((first, "blocks.12"), (second, "blocks.9")):
            choose(panel, "layer", layer)  # both workers run at once, on one model
        for panel, method in ((first, "xgradcam"), (second, "gradcam++")):
            choose(panel, "method", method)
        alone = Explainer(copy.deepcopy(model), preprocess, labels)
        for panel in (first, second):
            e = panel.explanation
            expected = alone.explain(samples.load("chelsea"), e.layer, e.target, e.method)
            np.testing.assert_allclose(panel.heatmap, expected.heatmap, atol=1e-6)
    finally:
        first.close()
        second.close()


def test_perturbed_inputs_go_in_batches_that_suit_the_device():
    assert passes.batch_size(None, "cpu") == 8  # no slower than 32 there, cancelled sooner
    assert passes.batch_size(None, torch.device("cuda")) == 32
    assert passes.batch_size(5, "cpu") == 5 and passes.batch_size(0, "cuda") == 1


def test_a_panel_that_starts_on_scorecam_shows_its_previews_then_its_map(lite0):
    model, preprocess, labels = lite0
    captions = []
    panel = CAMWidget(model, preprocess=preprocess, labels=labels, method="scorecam")
    panel.explainer.scorecam_channels = 24
    panel.main_view.caption.observe(lambda change: captions.append(change["new"]), "value")
    panel.set_image(samples.load("chelsea"))  # the first map of the panel is a Score-CAM
    assert [c for c in captions if "partial" in c][-1].endswith("100 % of the channels scored</i>")
    assert "Score-CAM at" in captions[-1] and panel.explanation.method == "scorecam"
    panel.close()


def test_faithfulness_curves_are_drawn_as_they_are_computed(panel):
    summaries, plots = [], []
    view = panel.faithfulness
    view.summary.observe(lambda change: summaries.append(change["new"]), "value")
    view.plot.observe(lambda change: plots.append(change["new"]), "value")
    panel.controls["faithfulness"].value = True  # 39 perturbed inputs: 5 batches of 8
    assert panel.wait(60)
    computing = [text for text in summaries if "computing:" in text]
    assert computing and computing[-1].endswith("100% of the perturbed inputs scored</i>")
    assert "insertion AUC" in summaries[-1] and len(set(plots)) >= 5  # a drawing per batch
