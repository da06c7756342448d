"""The app for a class: a page per student over one copy of the weights, the photos on
offer, the upload cap, and the cap on batched work running at once."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_widget import upload

from camwidget import samples, worker
from camwidget.widget import classroom
from camwidget.worker import Cancelled, Slots


def test_slots_cap_the_work_running_at_once():
    slots, inside, most, waited = Slots(1), [0], [0], []
    lock = threading.Lock()

    def work(name: str) -> None:
        with slots.taken(lambda: waited.append(name)):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            with slots.taken():  # the same thread: no second slot, no wait
                time.sleep(0.3)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work, args=(str(i),)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and waited  # one at a time; the others waited, told so


def test_a_wait_for_a_slot_can_be_cancelled():
    slots, held, release = Slots(1), threading.Event(), threading.Event()

    def holder() -> None:
        with slots.taken():
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)

    def cancelled() -> None:
        raise Cancelled("the student chose another method")

    with pytest.raises(Cancelled), slots.taken(cancelled):
        pass
    release.set()
    thread.join()
    with slots.taken():  # the cancelled wait took no slot
        pass


@pytest.fixture
def settings(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    samples.load("coffee").save(folder / "coffee.jpg")
    samples.load("rocket").save(folder / "rocket.png")
    (folder / "notes.txt").write_text("not a photo")
    yield classroom.Settings(images=str(folder), max_upload_mb=0.001, slow_jobs=1)
    worker.BATCHED_WORK.limit = None  # the process's cap, as the tests found it


def test_a_students_page_offers_the_photos_and_caps_uploads(settings):
    page, panel = classroom.student_app(settings)
    try:
        chooser, shown_panel = page.children
        assert shown_panel is panel
        assert list(chooser.options) == ["chelsea", "coffee.jpg", "rocket.png"]
        assert worker.BATCHED_WORK.limit == 1 and panel.max_upload_bytes == 1049
        shown = panel.main_view.rgb
        chooser.value = "rocket.png"
        panel.wait()
        assert panel.main_view.rgb.shape != shown.shape  # the rocket, in the worker
        rocket = panel.main_view.rgb
        big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(big).save(buffer, format="PNG")
        upload(panel, "big.png", buffer.getvalue())
        assert panel.main_view.rgb is rocket  # kept
        said = panel.controls["messages"].value
        assert "big.png is 0.0 MB: this server takes photos up to 0 MB" in said
    finally:
        panel.close()


def test_a_teachers_own_network_from_a_file_with_its_class_names(tmp_path):
    """``--model digits.pt --labels digits.txt``: a one-channel network made for 28×28,
    saved whole, named by the file of class names (one a line, blank lines left out)."""
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    torch.save(net, tmp_path / "digits.pt")
    (tmp_path / "digits.txt").write_text("\n".join(["zero", "one", "", *"23456789"]) + "\n")
    settings = classroom.Settings(
        model=str(tmp_path / "digits.pt"), labels=str(tmp_path / "digits.txt")
    )
    assert settings.environment()["CAMWIDGET_LABELS"] == str(tmp_path / "digits.txt")
    _, panel = classroom.student_app(settings)
    try:
        assert panel.explainer.labels[:3] == ["zero", "one", "2"]
        assert panel.explainer.model_input.size == (28, 28)
        caption = panel.controls["classes"].quick.options[0][0]
        assert caption.split(" · ")[0] in panel.explainer.labels
    finally:
        panel.close()


def test_two_students_share_the_weights_not_the_panel(settings):
    _, one = classroom.student_app(settings)
    _, other = classroom.student_app(settings)
    try:
        a, b = one.explainer.model, other.explainer.model
        assert a is not b
        assert next(a.parameters()).data_ptr() == next(b.parameters()).data_ptr()
        target = one.target
        one.target = one.compare_target
        one.wait()
        assert other.target == target and one.target != target
    finally:
        one.close()
        other.close()
