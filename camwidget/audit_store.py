"""Where an audit's rows go: memory, or a Parquet file written batch by batch."""

from __future__ import annotations

import importlib
import json
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
    the audit's settings in the file's metadata."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.writer = None

    def append(self, columns: dict[str, np.ndarray]) -> None:
        pa, pq = optional("pyarrow"), optional("pyarrow.parquet")
        maps = columns["map"]
        flat = pa.array(maps.reshape(len(maps), -1).ravel(), type=pa.float16())
        arrays = {k: pa.array(v) for k, v in columns.items() if k != "map"}
        arrays["map"] = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(maps.shape[1:])))
        table = pa.table(arrays)
        if self.writer is None:
            self.metadata["grid"] = list(maps.shape[1:])
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        """Write the settings (as they are at the end: complete or not) and close."""
        if self.writer is not None:
            self.writer.add_key_value_metadata({"camwidget": json.dumps(self.metadata)})
            self.writer.close()
            self.writer = None


def optional(name: str) -> object:
    """The optional module ``name`` (pyarrow, pandas), or a message on how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        package = name.split(".")[0]
        raise CamwidgetError(
            f"this part of the audit needs {package}: pip install 'camwidget[audit]'"
        ) from error
