"""Where an audit's rows go: memory, or a Parquet file written batch by batch."""

from __future__ import annotations

import importlib
import json
import queue
import threading
from pathlib import Path

import numpy as np

from .errors import CamwidgetError


class Store:
    """Where the audit's rows go: ``append`` a batch of columns, ``close`` at the end."""

    def __init__(self) -> None:
        self.batches: list[dict[str, np.ndarray]] = []
        self.metadata: dict[str, object] = {}

    def start(self, metadata: dict[str, object]) -> None:
        self.metadata = metadata

    def append(self, columns: dict[str, np.ndarray]) -> None:
        self.batches.append(columns)

    def close(self) -> None:
        """Nothing to flush in memory."""

    def columns(self) -> dict[str, np.ndarray]:
        """Every column of every row, in the order appended."""
        if not self.batches:
            return {}
        return {k: np.concatenate([b[k] for b in self.batches]) for k in self.batches[0]}


class ParquetStore(Store):
    """A Parquet file, one row group per batch (maps as fixed-size lists of float16),
    the audit's settings in the file's metadata. A thread of its own converts and
    writes the batches, at most two behind, so that the model does not wait on the
    disk; a failure to write is raised at the next ``append`` or at ``close``."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.writer = None
        self._waiting: queue.Queue[dict[str, np.ndarray] | None] = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def append(self, columns: dict[str, np.ndarray]) -> None:
        self._raise_failure()
        if self._thread is None:
            self.metadata["grid"] = list(columns["map"].shape[1:])
            self._thread = threading.Thread(target=self._write_all, name="camwidget-parquet")
            self._thread.start()
        self._waiting.put(columns)

    def close(self) -> None:
        """Write what is queued and the settings (as they are at the end: complete or
        not), and close."""
        if self._thread is not None:
            self._waiting.put(None)
            self._thread.join()
            self._thread = None
        if self.writer is not None:
            self.writer.add_key_value_metadata({"camwidget": json.dumps(self.metadata)})
            self.writer.close()
            self.writer = None
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise CamwidgetError(f"could not write {self.path}: {failure}") from failure

    def _write_all(self) -> None:
        while (columns := self._waiting.get()) is not None:
            if self._failure is None:
                try:
                    self._write(columns)
                except Exception as error:  # told in the audit's own thread
                    self._failure = error

    def _write(self, columns: dict[str, np.ndarray]) -> None:
        pa, pq = optional("pyarrow"), optional("pyarrow.parquet")
        maps = columns["map"]
        flat = pa.array(maps.reshape(len(maps), -1).ravel(), type=pa.float16())
        arrays = {k: pa.array(v) for k, v in columns.items() if k != "map"}
        arrays["map"] = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(maps.shape[1:])))
        table = pa.table(arrays)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)


def optional(name: str) -> object:
    """The optional module ``name`` (pyarrow, pandas), or a message on how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        package = name.split(".")[0]
        raise CamwidgetError(
            f"this part of the audit needs {package}: pip install 'camwidget[audit]'"
        ) from error
