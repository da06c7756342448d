"""Explain a whole dataset: one map per image, streamed to a store, triage numbers beside.

``explain_dataset`` reads images through a ``DataLoader`` (or a Ray Data pipeline with
``engine="ray"``), explains them in batches with a backward to the chosen layer only, and
writes one row per image: where it came from, true and predicted class, probability,
loss, the raw map (float16, at feature resolution) and three numbers for triage (the
map's centroid, its share of mass in the image border, its entropy). The rows go to an
in-memory table or to a Parquet file, written batch by batch (constant memory), which
``Audit.open`` reads back after a restart.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from . import images
from .audit_ray import RayEngine
from .audit_ray import run as run_on_ray
from .audit_store import ParquetStore, Store, optional
from .errors import CamwidgetError
from .explainer import Explainer
from .preparation import pixel_values

if TYPE_CHECKING:
    import pandas as pd

#: Extensions read from a folder of images.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: The image border, as a share of each side, whose heatmap mass ``border`` measures.
BORDER = 0.125
#: The long side of the grid the triage numbers are computed on.
TRIAGE_SIDE = 64
_NUMBERS = ("label", "predicted", "probability", "loss", "target", "score")
_TRIAGE = ("centroid_y", "centroid_x", "border", "entropy")


# ----------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Item:
    """One image of a source: its place, its path (or None), its true class (-1: none,
    or not known until a Dataset item is read)."""

    index: int
    path: str | None
    label: int


class Images(Dataset):
    """A source as model inputs: item i -> (input (3, H, W), label, index). Every image
    is resized to ``size`` and normalised as the explainer's model wants (or through the
    explainer's own ``preprocess``), so that images of any size batch together."""

    def __init__(self, explainer: Explainer, source: object) -> None:
        self.items, self.dataset, self.classes = _items(source, explainer)
        self.preprocess = explainer.preprocess
        self.model_input = explainer.model_input
        self.size = explainer.model_input.size or explainer.model_input.preferred

    def __len__(self) -> int:
        return len(self.items)

    def paths(self, indices: Sequence[int]) -> np.ndarray:
        """The paths of images ``indices`` ("" where the source has none)."""
        return np.asarray([self.items[i].path or "" for i in indices], dtype=object)

    def read(self, index: int) -> tuple[object, int]:
        """Image ``index`` as the source holds it (a path, a PIL image, a tensor) and its
        true class (-1: none)."""
        if self.dataset is None:
            return self.items[index].path, self.items[index].label
        image, label = self.dataset[index]
        return image, int(label)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        """(input, label, index): the input uint8 pixels where the explainer normalises
        (a quarter of the bytes to the device, normalised there: :func:`explain_rows`),
        else as the ``preprocess`` or a tensor source gives it."""
        image, label = self.read(index)
        if isinstance(image, Tensor):
            inputs = torch.nn.functional.interpolate(
                image.detach().float()[None], size=self.size, mode="bilinear", align_corners=False
            )[0]
        elif self.preprocess is not None:
            inputs = pixel_values(self.preprocess(Image.fromarray(images.to_rgb(image))))
            inputs = inputs[0] if inputs.dim() == 4 else inputs
        else:
            inputs = self.model_input.at_size(self.size, "the audit").pixels(images.to_rgb(image))
        return inputs, label, index

    def collate(self, items: Sequence[tuple[Tensor, int, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Items as one batch (inputs, labels, indices); the inputs stay uint8 where all
        are pixels, else the pixels are normalised here."""
        inputs = [x for x, _, _ in items]
        if len({x.dtype for x in inputs}) > 1:
            inputs = [
                self.model_input.normalise(x) if x.dtype == torch.uint8 else x for x in inputs
            ]
        labels, indices = ([item[k] for item in items] for k in (1, 2))
        return torch.stack(inputs), torch.tensor(labels), torch.tensor(indices)


def _items(source: object, explainer: Explainer) -> tuple[list[Item], Dataset | None, list]:
    """The items of ``source`` (a folder, a list of paths, or a Dataset of (image,
    label)), the Dataset itself (or None) and the folder's class names."""
    if isinstance(source, (str, Path)):
        items, classes = _folder(Path(source), explainer)
        return items, None, classes
    if isinstance(source, Dataset):  # labels come with the images, when read
        return [Item(i, None, -1) for i in range(len(source))], source, []  # type: ignore[arg-type]
    if isinstance(source, Sequence):
        return [Item(i, str(path), -1) for i, path in enumerate(source)], None, []
    raise CamwidgetError(
        f"cannot audit a {type(source).__name__}: give a folder of images (one sub-folder "
        "per class), a list of image paths, or a Dataset yielding (image, label)"
    )


def _folder(folder: Path, explainer: Explainer) -> tuple[list[Item], list[str]]:
    """A folder with one sub-folder per class (torchvision's ImageFolder layout). A
    sub-folder named after one of the model's classes (or its index) is that class;
    otherwise classes are numbered in sorted order, as ImageFolder does."""
    if not folder.is_dir():
        raise CamwidgetError(f"{str(folder)!r} is not a folder")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise CamwidgetError(f"{str(folder)!r} has no sub-folders: one per class is needed")
    index = {name: i for i, name in enumerate(classes)}
    try:
        index = {name: explainer.check_target(name) for name in classes}
        index = {name: int(i) for name, i in index.items()}
    except CamwidgetError:
        pass  # not the model's class names: ImageFolder's numbering
    items = [
        Item(0, str(path), index[name])
        for name in classes
        for path in sorted((folder / name).rglob("*"))
        if path.suffix.lower() in EXTENSIONS
    ]
    if not items:
        raise CamwidgetError(f"no images ({', '.join(EXTENSIONS)}) under {str(folder)!r}")
    return [Item(i, item.path, item.label) for i, item in enumerate(items)], classes


# ----------------------------------------------------------------------- one batch


def target_for(targets: str | Callable[[int], object], label: int) -> object:
    """The target of an image with true class ``label`` (-1: unknown)."""
    if callable(targets):
        return targets(label)
    if targets == "true" and label >= 0:
        return label
    if targets in ("predicted", "true"):
        return None
    raise CamwidgetError(f"targets must be 'predicted', 'true' or a function; got {targets!r}")


def explain_rows(
    explainer: Explainer,
    inputs: Tensor,
    labels: Sequence[int],
    indices: Sequence[int],
    layer: str,
    method: str,
    targets: str | Callable[[int], object],
) -> dict[str, np.ndarray]:
    """One batch of the audit, as columns: the engine-independent step (the local loop
    and each Ray actor run exactly this)."""
    chosen = [target_for(targets, int(label)) for label in labels]
    if inputs.dtype == torch.uint8:  # pixels: normalised on the model's device
        moved = inputs.to(explainer.device, non_blocking=inputs.is_pinned())
        inputs = explainer.model_input.normalise(moved)
    explained, output = explainer.explain_inputs(inputs, layer, chosen, method)
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise CamwidgetError("an audit explains classifiers: the model's output must be logits")
    probabilities = torch.softmax(output.float(), dim=1)
    best = probabilities.max(dim=1)
    known = torch.tensor([int(label) for label in labels])
    losses = torch.full((len(labels),), float("nan"))
    rows = (known >= 0).nonzero().flatten()
    if len(rows):
        losses[rows] = torch.nn.functional.cross_entropy(
            output.float()[rows], known[rows], reduction="none"
        )
    raws = np.stack([e.raw for e in explained])
    columns = {
        "index": np.asarray(indices, dtype=np.int64),
        "label": known.numpy().astype(np.int32),
        "predicted": best.indices.numpy().astype(np.int32),
        "probability": best.values.numpy().astype(np.float32),
        "loss": losses.numpy().astype(np.float32),
        "target": np.asarray([_target_index(e.target) for e in explained], dtype=np.int32),
        "score": np.asarray([e.score for e in explained], dtype=np.float32),
        "map": raws.astype(np.float16),
    }
    triage = summaries(torch.from_numpy(raws).to(explainer.device), tuple(inputs.shape[-2:]))
    triage = triage.float().cpu().numpy()
    columns.update({name: triage[:, k] for k, name in enumerate(_TRIAGE)})
    return columns


def _target_index(target: object) -> int:
    return target if isinstance(target, int) else -1


def summaries(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Triage numbers of maps (N, h, w), on their device, as (N, 4) float64: each map's
    centroid (y, x) as shares of the image's height and width, the share of its mass in
    the outer ``BORDER`` of each side, and its entropy as a share of the largest
    possible (1: spread evenly, 0: one pixel). Computed on the positive part, upsampled
    (bilinear) to ``size`` capped at ``TRIAGE_SIDE`` pixels on the long side (against
    the full size: the same to ~2e-3, a quarter of the time); a map with no positive
    mass gives NaN."""
    scale = min(1.0, TRIAGE_SIDE / max(size))
    height, width = max(8, round(size[0] * scale)), max(8, round(size[1] * scale))
    heat = F.interpolate(
        maps.float()[:, None], size=(height, width), mode="bilinear", align_corners=False
    )[:, 0]
    heat = heat.clamp(min=0).double()
    total = heat.sum(dim=(1, 2))
    usable = torch.isfinite(total) & (total > 0)
    share = heat / torch.where(usable, total, torch.ones_like(total))[:, None, None]
    ys, xs = (torch.arange(n, dtype=heat.dtype, device=heat.device) + 0.5 for n in (height, width))
    top, left = max(1, round(BORDER * height)), max(1, round(BORDER * width))
    found = torch.stack(
        [
            (share.sum(dim=2) * ys).sum(dim=1) / height,
            (share.sum(dim=1) * xs).sum(dim=1) / width,
            1.0 - share[:, top : height - top, left : width - left].sum(dim=(1, 2)),
            -torch.special.xlogy(share, share).sum(dim=(1, 2)) / math.log(height * width),
        ],
        dim=1,
    )
    return torch.where(usable[:, None], found, torch.full_like(found, math.nan))


# ----------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class AuditedImage:
    """One image of an audit."""

    index: int
    path: str | None
    raw: np.ndarray
    label: int
    predicted: int
    probability: float
    loss: float
    target: int
    score: float
    centroid: tuple[float, float]
    border: float
    entropy: float


class Audit:
    """The explained dataset: ``len(audit)``, ``audit[i]`` (the i-th image in source
    order), ``audit.to_pandas()`` (one row per image, without the maps), and
    ``Audit.open(path)`` for a Parquet store. ``settings``: layer, method, targets,
    class names; ``complete``: False when the run was interrupted."""

    def __init__(self, columns: dict[str, np.ndarray], settings: dict) -> None:
        order = np.argsort(columns["index"], kind="stable") if columns else np.array([], int)
        self._columns = {k: v[order] for k, v in columns.items()}
        self.settings = settings
        self.complete = bool(settings.get("complete", True))

    @classmethod
    def open(cls, path: str | Path) -> Audit:
        """Reopen an audit written to a Parquet store."""
        pq = optional("pyarrow.parquet")
        try:
            table = pq.read_table(path, memory_map=True)
            footer = pq.ParquetFile(path).metadata.metadata or {}
        except (OSError, ValueError) as error:
            raise CamwidgetError(f"cannot read the audit {str(path)!r}: {error}") from error
        settings = json.loads(footer.get(b"camwidget", b"{}"))
        columns = {n: table.column(n).to_numpy() for n in table.column_names if n != "map"}
        flat = table.column("map").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        grid = tuple(settings.get("grid", ()))
        columns["map"] = flat.reshape(table.num_rows, *grid).astype(np.float16)
        return cls(columns, settings)

    def __len__(self) -> int:
        return len(self._columns.get("index", ()))

    def __getitem__(self, i: int) -> AuditedImage:
        if not -len(self) <= i < len(self):
            raise IndexError(f"the audit has {len(self)} images; no image {i}")
        c = {k: v[i] for k, v in self._columns.items()}
        return AuditedImage(
            index=int(c["index"]),
            path=str(c["path"]) or None,
            raw=c["map"].astype(np.float32),
            label=int(c["label"]),
            predicted=int(c["predicted"]),
            probability=float(c["probability"]),
            loss=float(c["loss"]),
            target=int(c["target"]),
            score=float(c["score"]),
            centroid=(float(c["centroid_y"]), float(c["centroid_x"])),
            border=float(c["border"]),
            entropy=float(c["entropy"]),
        )

    def __iter__(self) -> Iterator[AuditedImage]:
        return (self[i] for i in range(len(self)))

    def to_pandas(self) -> pd.DataFrame:
        """One row per image with its numbers (no maps), the class names where known
        and whether the prediction is right."""
        pd = optional("pandas")
        frame = pd.DataFrame({k: v for k, v in self._columns.items() if k != "map"})
        names = self.settings.get("class_names") or {}
        frame["label_name"] = [names.get(str(i), "") for i in frame["label"]]
        frame["predicted_name"] = [names.get(str(i), "") for i in frame["predicted"]]
        frame["correct"] = frame["label"] == frame["predicted"]
        return frame


# ----------------------------------------------------------------------- the run


def explain_dataset(
    explainer: Explainer | torch.nn.Module,
    source: object,
    *,
    layer: str | None = None,
    method: str = "gradcam",
    targets: str | Callable[[int], object] = "predicted",
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    store: str | Path | Store | None = None,
    engine: str | RayEngine = "local",
    progress: bool = True,
) -> Audit:
    """Explain every image of ``source`` (a folder with one sub-folder per class, a list
    of paths, or a Dataset yielding (image, label)) and return the :class:`Audit`.

    ``targets``: ``"predicted"`` (the top class), ``"true"`` (the label; the top class
    where there is none) or a function label -> target. ``store``: None (in memory), a
    ``.parquet`` path or a :class:`Store`. ``engine``: ``"local"`` (a DataLoader with
    ``num_workers`` processes; None: none on a CPU, whose cores the model takes, half
    the cores up to 4 for a GPU), ``"ray"`` or a :class:`~camwidget.audit_ray.RayEngine`
    (Ray Data actors, each with one copy of the model). ``device``: where the model runs when
    given a bare model. An interrupt (Ctrl-C, the stop button) keeps what is done; an
    error keeps it too (in the store, marked incomplete) and says so in its notes.
    """
    if not isinstance(explainer, Explainer):
        explainer = Explainer(explainer, device=device)
    if not isinstance(targets, str) and not callable(targets):
        raise CamwidgetError("targets must be 'predicted', 'true' or a function label -> target")
    engine = RayEngine() if engine == "ray" else engine
    if engine != "local" and not isinstance(engine, RayEngine):
        raise CamwidgetError(f"engine must be 'local', 'ray' or a RayEngine; got {engine!r}")
    method, layer, _, _ = explainer.resolve(method, layer)
    data = Images(explainer, source)
    sink = store if isinstance(store, Store) else ParquetStore(store) if store else Store()
    sink.start(_settings(explainer, data, layer, method, targets))
    _run(engine, explainer, data, (layer, method, targets), batch_size, num_workers, sink, progress)
    if isinstance(sink, ParquetStore):
        return Audit.open(sink.path) if sink.path.exists() else Audit({}, sink.metadata)
    return Audit(sink.columns(), sink.metadata)


def _run(
    engine: str | RayEngine,
    explainer: Explainer,
    data: Images,
    settings: tuple,
    batch_size: int,
    num_workers: int | None,
    sink: Store,
    progress: bool,
) -> None:
    """Run ``engine`` into ``sink``. An interrupt or an error keeps what is done, marked
    incomplete in the store's settings (``complete``) and said in the progress bar (an
    interrupt) or the error's notes."""
    bar = _Progress(len(data), progress)
    try:
        if isinstance(engine, RayEngine):
            run_on_ray(explainer, data, explain_rows, settings, batch_size, sink, bar, engine)
        else:
            _run_local(explainer, data, settings, batch_size, num_workers, sink, bar)
    except BaseException as stopped:
        sink.metadata["complete"] = False
        kept = f"{bar.done} of {len(data)} images explained and kept"
        if isinstance(sink, ParquetStore):
            kept += f" in {sink.path} (camwidget.Audit.open)"
        if not isinstance(stopped, KeyboardInterrupt):
            stopped.add_note(f"the audit stopped: {kept}")
            raise
        bar.say(f"interrupted: {kept}")
    finally:
        bar.close()
        sink.close()


def _settings(explainer: Explainer, data: Images, layer: str, method: str, targets: object) -> dict:
    names = {str(i): explainer.label(i) for i in range(explainer.num_classes)}
    return {
        "layer": layer,
        "method": method,
        "targets": targets if isinstance(targets, str) else "function",
        "size": list(data.size),
        "class_names": names,
        "folder_classes": data.classes,
        "complete": True,
    }


def _run_local(
    explainer: Explainer,
    data: Images,
    settings: tuple,
    batch_size: int,
    num_workers: int | None,
    sink: Store,
    bar: _Progress,
) -> None:
    """The local engine: a DataLoader (``num_workers`` processes read and resize the
    images; pinned memory for a GPU) feeding :func:`explain_rows`."""
    if num_workers is None:
        cores = os.cpu_count() or 1
        num_workers = 0 if explainer.device.type == "cpu" else min(4, cores // 2)
    loader = DataLoader(
        data,
        batch_size=max(1, batch_size),
        num_workers=num_workers,
        pin_memory=explainer.device.type == "cuda",
        collate_fn=data.collate,
    )
    for inputs, labels, indices in loader:
        rows = indices.tolist()
        columns = explain_rows(explainer, inputs, labels.tolist(), rows, *settings)
        sink.append(columns | {"path": data.paths(rows)})
        bar.update(len(rows))


class _Progress:
    """A progress bar with throughput (tqdm's notebook bar in Jupyter, text elsewhere)."""

    def __init__(self, total: int, show: bool) -> None:
        self.done, self.start = 0, time.perf_counter()
        self.bar = None
        if show:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # no bar without tqdm: the audit runs the same
                return
            self.bar = tqdm(total=total, unit="image", desc="explaining")

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
