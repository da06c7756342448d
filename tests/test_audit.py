"""explain_dataset: a labelled folder built from the shipped photos, equal to explain_batch,
the Parquet store, the triage numbers, interrupts, other sources, and the Ray engine."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import PHOTO_CLASSES
from PIL import Image

from camwidget import (
    Audit,
    CamwidgetError,
    Explainer,
    RayEngine,
    explain_dataset,
    render,
    samples,
    zoo,
)
from camwidget.audit import Images, ParquetStore, Store, summaries


@pytest.fixture(scope="module")
def lite0():
    model, _, labels = zoo.load("efficientnet_lite0")
    return Explainer(model, labels=labels)


@pytest.fixture(scope="module")
def folder(photo_folder):
    return photo_folder


@pytest.fixture(scope="module")
def audit(lite0, folder):
    return explain_dataset(lite0, folder, layer="blocks.12", batch_size=4, progress=False)


def test_one_row_per_image_in_source_order(audit, folder, lite0):
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    assert len(audit) == len(paths) == 15
    assert [audit[i].path for i in range(len(audit))] == [str(p) for p in paths]
    assert [audit[i].index for i in range(len(audit))] == list(range(15))
    for image in audit:
        assert image.label == lite0.check_target(image.path.split("/")[-2])
        assert image.raw.shape == (7, 7) and image.target == image.predicted  # stride 32
    frame = audit.to_pandas()
    assert len(frame) == 15 and "map" not in frame
    assert set(frame["label_name"]) == set(PHOTO_CLASSES)
    plain = frame["path"].str.endswith(("/chelsea.jpg", "/coffee.jpg", "/grace_hopper.jpg"))
    assert frame[plain]["correct"].all() and not frame["correct"].all()  # mistakes to audit
    assert audit.settings["layer"] == "blocks.12" and audit.complete


def test_equal_to_explain_batch(audit, lite0, folder):
    paths = [audit[i].path for i in range(6)]
    resized = [
        Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR) for p in paths
    ]
    for image, e in zip(audit, lite0.explain_batch(resized, "blocks.12"), strict=False):
        scale = float(np.abs(e.raw).max())
        bound = 1e-5 * scale + np.abs(e.raw) * 2.0**-11  # plus float16's rounding
        assert (np.abs(image.raw - e.raw) <= bound + 1e-12).all()
        assert image.predicted == e.target and image.probability == pytest.approx(e.probability)
        assert image.score == pytest.approx(e.score, rel=1e-5)


def test_losses_and_true_targets(lite0, folder):
    audit = explain_dataset(lite0, folder, targets="true", batch_size=8, progress=False)
    for image in audit:
        assert image.target == image.label
        photo = Image.open(image.path).convert("RGB")
        logits = lite0.predict(photo.resize((224, 224), Image.Resampling.BILINEAR), k=1000)
        probability = dict((i, p) for i, _, p in logits)[image.label]
        assert image.loss == pytest.approx(-math.log(probability), rel=1e-3, abs=1e-4)


def test_the_parquet_store_round_trips(audit, lite0, folder, tmp_path):
    path = tmp_path / "audit.parquet"
    stored = explain_dataset(
        lite0, folder, layer="blocks.12", batch_size=4, store=path, progress=False
    )
    reopened = Audit.open(path)
    assert len(reopened) == len(audit) == len(stored)
    for a, b in zip(audit, reopened, strict=True):
        np.testing.assert_array_equal(a.raw, b.raw)
        assert (a.path, a.label, a.predicted, a.probability) == (
            b.path,
            b.label,
            b.predicted,
            b.probability,
        )
    assert reopened.settings["class_names"]["285"] == "Egyptian cat"
    with pytest.raises(CamwidgetError, match="cannot read the audit"):
        Audit.open(tmp_path / "missing.parquet")


def test_triage_numbers_by_hand():
    uniform = torch.ones(4, 4)
    corner = torch.zeros(8, 8)
    corner[0, 0] = 1.0
    upsampled = torch.nn.functional.interpolate(corner[None, None], size=(4, 4))[0, 0]
    found = summaries(torch.stack([uniform, -uniform, upsampled]), (8, 8))
    centroid_y, centroid_x, border, entropy = found[0].tolist()
    assert (centroid_y, centroid_x) == (0.5, 0.5)
    assert border == pytest.approx(1 - 0.75**2)  # the outer eighth of each side
    assert entropy == pytest.approx(1.0)
    assert found[1].isnan().all()  # no positive mass
    centroid_y, centroid_x, border, entropy = summaries(corner[None], (8, 8))[0].tolist()
    assert border == 1.0 and centroid_y == centroid_x == 0.0625 and entropy == 0.0
    alone = summaries(upsampled[None], (8, 8))
    assert torch.equal(found[2:], alone)  # each map's numbers are its own


def test_triage_numbers_equal_a_direct_evaluation():
    """At full size (no cap), on random maps: the numbers from their definitions in
    float64 numpy, with the same bilinear upsampling."""
    maps = torch.randn(3, 5, 7)
    for row, numbers in enumerate(summaries(maps, (40, 56)).tolist()):
        heat = np.maximum(render.upsample(maps[row].numpy(), (40, 56)), 0).astype(np.float64)
        share = heat / heat.sum()
        ys, xs = np.arange(40) + 0.5, np.arange(56) + 0.5
        inner = share[5:35, 7:49].sum()  # the outer eighth of each side left out
        logs = np.log(share, out=np.zeros_like(share), where=share > 0)
        expected = [
            (share.sum(axis=1) * ys).sum() / 40,
            (share.sum(axis=0) * xs).sum() / 56,
            1 - inner,
            -(share * logs).sum() / math.log(40 * 56),
        ]
        np.testing.assert_allclose(numbers, expected, rtol=1e-6)


class StopAfter(Store):
    """A store that is interrupted (as by Ctrl-C) after ``batches`` batches."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.left = batches

    def append(self, columns):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        super().append(columns)


def test_an_interrupt_keeps_what_is_done(lite0, folder, tmp_path):
    audit = explain_dataset(lite0, folder, batch_size=4, store=StopAfter(2), progress=False)
    assert len(audit) == 8 and not audit.complete
    assert [image.index for image in audit] == list(range(8))

    class Interrupted(ParquetStore):
        def append(self, columns):
            if columns["index"][0] >= 8:
                raise KeyboardInterrupt
            super().append(columns)

    stored = explain_dataset(
        lite0, folder, batch_size=4, store=Interrupted(tmp_path / "a.parquet"), progress=False
    )
    reopened = Audit.open(tmp_path / "a.parquet")
    assert len(stored) == len(reopened) == 8 and not reopened.complete


class Failing(torch.utils.data.Dataset):
    """Twelve photos, of which the one at ``broken`` cannot be read (a disk gone away)."""

    def __init__(self, broken: int) -> None:
        self.broken = broken

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i):
        if i == self.broken:
            raise OSError(f"photo {i}: input/output error")
        return samples.load(("chelsea", "coffee", "rocket")[i % 3]), 0


def test_an_error_keeps_every_finished_batch_readable(lite0, tmp_path):
    path = tmp_path / "audit.parquet"
    with pytest.raises(OSError, match="photo 9: input/output error") as raised:
        explain_dataset(lite0, Failing(broken=9), batch_size=4, store=path, progress=False)
    assert raised.value.__notes__ == [
        f"the audit stopped: 8 of 12 images explained and kept in {path} (camwidget.Audit.open)"
    ]
    kept = Audit.open(path)
    assert [image.index for image in kept] == list(range(8)) and not kept.complete
    whole = explain_dataset(lite0, Failing(broken=-1), batch_size=4, progress=False)
    np.testing.assert_array_equal(kept[7].raw, whole[7].raw)


class Photos(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.items = [(samples.load("chelsea"), 285), (samples.load("coffee"), 967)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_a_dataset_and_a_list_of_paths(lite0, folder):
    audit = explain_dataset(lite0, Photos(), progress=False)
    assert [image.predicted for image in audit] == [285, 967]
    assert [image.path for image in audit] == [None, None]
    paths = [str(p) for p in sorted(folder.rglob("*.jpg"))[:3]]
    listed = explain_dataset(lite0, paths, progress=False)
    assert [image.path for image in listed] == paths
    assert all(image.label == -1 and math.isnan(image.loss) for image in listed)


def test_bad_sources_are_told_in_words(lite0, tmp_path):
    with pytest.raises(CamwidgetError, match="is not a folder"):
        explain_dataset(lite0, tmp_path / "nowhere", progress=False)
    with pytest.raises(CamwidgetError, match="no sub-folders"):
        explain_dataset(lite0, tmp_path, progress=False)
    with pytest.raises(CamwidgetError, match="cannot audit a int"):
        explain_dataset(lite0, 3, progress=False)
    with pytest.raises(CamwidgetError, match="engine must be 'local', 'ray' or a RayEngine"):
        explain_dataset(lite0, [str(tmp_path)], engine="spark", progress=False)


@pytest.fixture(scope="module")
def ray():
    """Ray, shut down (its processes ended) after this module's tests."""
    ray = pytest.importorskip("ray")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_the_ray_engine_gives_the_same_audit(audit, lite0, folder, tmp_path, ray):
    path = tmp_path / "ray.parquet"
    distributed = explain_dataset(
        lite0, folder, layer="blocks.12", batch_size=4, engine="ray", store=path, progress=False
    )
    assert len(distributed) == len(audit)
    for a, b in zip(audit, distributed, strict=True):
        assert (a.index, a.path, a.predicted) == (b.index, b.path, b.predicted)
        assert b.score == pytest.approx(a.score, rel=1e-5)
        # one thread per actor against two here: float32 sums in another order, which a
        # map with much cancellation (a sum of 112 channels) turns into ~1e-3 of its top;
        # how many maps stay bit-equal depends on the CPU (13 of 15 on one machine, 11
        # on another), so only the tolerance is asserted
        np.testing.assert_allclose(b.raw, a.raw, atol=1e-2 * float(np.abs(a.raw).max()))
    assert len(Audit.open(path)) == len(audit)


def test_a_missing_optional_package_is_named(lite0, folder, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def without_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_pyarrow)
    monkeypatch.setattr("importlib.import_module", lambda name: without_pyarrow(name))
    with pytest.raises(CamwidgetError, match=r"needs pyarrow: pip install 'camwidget\[audit\]'"):
        explain_dataset(lite0, folder, store=tmp_path / "a.parquet", progress=False)


@pytest.mark.slow
def test_ray_fails_fast_on_a_request_it_cannot_meet(lite0, folder, tmp_path, ray):
    impossible = RayEngine(actors=2, cpus=1024, start_timeout=5)
    start = time.perf_counter()
    with pytest.raises(CamwidgetError) as raised:
        explain_dataset(lite0, folder, engine=impossible, store=tmp_path / "a.parquet")
    assert time.perf_counter() - start < 60  # without the bound: waits for ever
    message = str(raised.value)
    assert message.startswith("Ray could not start 2 actors with 1024 CPUs and 0 GPUs each")
    assert "within 5 s; the cluster has" in message and "CPUs, 0 GPUs and" in message
    assert "Ray says: Timed out while starting actors" in message
    assert raised.value.__notes__ == [
        "the audit stopped: 0 of 15 images explained and kept in "
        f"{tmp_path / 'a.parquet'} (camwidget.Audit.open)"
    ]


@pytest.mark.slow
def test_ray_fails_fast_on_a_cluster_that_does_not_answer(tmp_path):
    """In a process of its own: the connection Ray keeps trying must not touch this one."""
    pytest.importorskip("ray")
    script = (
        "from camwidget import RayEngine, explain_dataset, samples, zoo\n"
        "model, _, _ = zoo.load()\n"
        f"samples.load('chelsea').save({str(tmp_path / 'cat.png')!r})\n"
        "engine = RayEngine(address='127.0.0.1:9', start_timeout=5)\n"
        f"explain_dataset(model, [{str(tmp_path / 'cat.png')!r}], engine=engine)\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert time.perf_counter() - start < 90
    assert done.returncode == 1
    assert (
        "CamwidgetError: could not reach the Ray cluster at 127.0.0.1:9 within 5 s" in done.stderr
    )
    assert "the audit stopped: 0 of 1 images explained and kept" in done.stderr


def test_a_store_that_cannot_be_written_says_so(lite0, folder, tmp_path):
    """The Parquet file is written in a thread of its own; its failure reaches the
    audit's caller, in words."""
    path = tmp_path / "no such folder" / "audit.parquet"
    with pytest.raises(CamwidgetError, match="could not write .*audit.parquet"):
        explain_dataset(lite0, folder, batch_size=4, store=path, progress=False)


class ThreePhotos(torch.utils.data.Dataset):
    """Three photos as PIL images; with ``tensor_first`` the first as an already
    normalised tensor."""

    def __init__(self, explainer: Explainer, tensor_first: bool) -> None:
        self.photos = [samples.load(name) for name in ("chelsea", "coffee", "rocket")]
        if tensor_first:
            normalise = explainer.model_input.at_size((224, 224), "test")
            self.photos[0] = normalise(np.asarray(self.photos[0]))[0]

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i):
        return self.photos[i], 0


def test_pixels_travel_as_bytes_and_mix_with_tensors(lite0):
    """Photos reach the batch as uint8 pixels, normalised on the model's device; a
    source mixing tensors and photos gets the numbers of photos alone."""
    data = Images(lite0, ThreePhotos(lite0, tensor_first=True))
    assert data[1][0].dtype == torch.uint8 and data[0][0].dtype == torch.float32
    runs = [
        explain_dataset(lite0, ThreePhotos(lite0, first), layer="blocks.12", progress=False)
        for first in (True, False)
    ]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(a.raw, b.raw, rtol=1e-5, atol=1e-5 * np.abs(b.raw).max())
        assert a.probability == pytest.approx(b.probability, rel=1e-5)
