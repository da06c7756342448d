"""Feature maps in any layout, read as (N, C, h, w).

A layer's output is a map when it lies on a grid over the input image:

- ``"nchw"``: (N, C, H, W), as convolutions give;
- ``"nhwc"``: channels last, (N, H, W, C), as inside Swin and ConvNeXt-style blocks;
- ``"tokens"``: (N, T, C) with T = extra + h·w, as in vision transformers, where the
  ``extra`` tokens before the grid (class, distillation, register tokens) are dropped.

Attention matrices, per-channel gates (N, C, 1, 1) and anything whose grid cannot be
derived from the input's size are not maps. Every method sees a map as (C, h, w).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from torch import Tensor

#: The largest total stride of a map: a smaller map is a gate or a pooled vector.
MAX_STRIDE = 64
#: The most tokens a transformer puts before its grid (class, distillation, registers).
MAX_EXTRA_TOKENS = 16
#: Pixels of the input that unpadded convolutions may lose at full resolution.
BORDER = 16

Reshape = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Layout:
    """How a layer's output lies on its grid: ``kind`` (``"nchw"``, ``"nhwc"``,
    ``"tokens"`` or ``"custom"``), ``grid`` (h, w), ``extra`` tokens before the grid,
    and for ``"custom"`` the user's ``reshape`` to (N, C, h, w)."""

    kind: str
    grid: tuple[int, int]
    extra: int = 0
    reshape: Reshape | None = None

    def to_nchw(self, tensor: Tensor) -> Tensor:
        """``tensor`` (the layer's output, or its gradient) as (N, C, h, w): a view where
        the layout allows."""
        if self.kind == "nchw":
            return tensor
        if self.kind == "nhwc":
            return tensor.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            height, width = self.grid
            grid = tensor[:, self.extra :]
            return grid.reshape(grid.shape[0], height, width, grid.shape[2]).permute(0, 3, 1, 2)
        return self.reshape(tensor)


KINDS = ("nchw", "nhwc", "tokens")


@lru_cache(maxsize=4096)  # called once per module per pass; the shapes repeat
def find(
    shape: tuple[int, ...],
    input_size: tuple[int, int],
    batch: int,
    channels_last: bool = False,
    kind: str | None = None,
) -> Layout | str:
    """The layout of an output of ``shape`` for an input batch (``batch``, 3, H, W) of
    ``input_size``, or why it is not a feature map. A 4-D shape that reads both ways is
    (N, C, H, W) unless ``channels_last`` (the module works on the last dimension, as
    ``nn.Linear`` and ``nn.LayerNorm`` do), or unless ``kind`` (one of :data:`KINDS`,
    proven by :func:`proven`) says which it is."""
    if shape[0] != batch:
        return f"its first dimension ({shape[0]}) is not the batch ({batch})"
    if kind is not None and (len(shape) == 3) != (kind == "tokens"):
        return f"its output {shape} is not {kind}"
    if len(shape) == 4:
        first, last = fits(shape[2], shape[3], input_size), fits(shape[1], shape[2], input_size)
        first, last = first and kind != "nhwc", last and kind != "nchw"
        if first and not (last and channels_last and kind is None):
            return Layout("nchw", (shape[2], shape[3]))
        if last:
            return Layout("nhwc", (shape[1], shape[2]))
        return (
            f"its output {shape} lies on no grid over the input {input_size[0]}×"
            f"{input_size[1]}, neither as (N, C, H, W) nor as (N, H, W, C)"
        )
    if len(shape) == 3:
        for extra in range(min(MAX_EXTRA_TOKENS, shape[1] - 1) + 1):
            grid = token_grid(shape[1] - extra, input_size)
            if grid is not None and extra <= grid[0] * grid[1] // 4:
                return Layout("tokens", grid, extra)
        return (
            f"its output {shape} is not (N, T, C) tokens on a grid over the input "
            f"{input_size[0]}×{input_size[1]} (T = extra + h·w, at most "
            f"{MAX_EXTRA_TOKENS} extra tokens and a quarter of the grid)"
        )
    return f"its output has {len(shape)} dimensions; a feature map has 3 or 4"


def fits(height: int, width: int, input_size: tuple[int, int]) -> bool:
    """Whether an (h, w) grid lies on the input (H, W) at one stride s <= MAX_STRIDE:
    W/s is w within 15% (rounding, unpadded borders), and below stride 2 the map keeps
    the input's size within BORDER pixels (a T×T attention matrix at about the input's
    size does not)."""
    rows, cols = input_size
    stride = rows / height
    if stride > MAX_STRIDE or abs(cols / stride - width) > max(1.0, 0.15 * width):
        return False
    return stride >= 2 or (rows - BORDER <= height <= rows + 2 and cols - BORDER <= width)


def token_grid(count: int, input_size: tuple[int, int]) -> tuple[int, int] | None:
    """The grid (h, w) of ``count`` tokens on the input (H, W): h·w = count, with h and
    w the input's sides divided by one integer stride s, both rounded down or both up
    (as patch embeddings and strided stages do)."""
    rows, cols = input_size
    for stride in range(1, MAX_STRIDE + 1):
        for height, width in (
            (rows // stride, cols // stride),
            (-(-rows // stride), -(-cols // stride)),
        ):
            if height * width == count:
                return height, width
    return None


def proven(
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
    sizes: tuple[tuple[int, int], tuple[int, int]],
    batch: int,
    found: Layout,
) -> str | None:
    """The kind (of :data:`KINDS`) under which a module's outputs of ``shapes`` for
    inputs of ``sizes`` (two sizes, of different aspect) are one map: the second grid is
    the second size at the first grid's stride (within a cell, or 15 %: rounding and
    unpadded borders), with the same channels and extra tokens; ``found`` (its layout
    at the first size) is tried first. None: no kind is."""
    options = ("tokens",) if found.kind == "tokens" else ("nchw", "nhwc")
    for kind in sorted(options, key=lambda option: option != found.kind):
        first, second = (
            find(s, size, batch, kind=kind) for s, size in zip(shapes, sizes, strict=True)
        )
        if not (isinstance(first, Layout) and isinstance(second, Layout)):
            continue
        channels = {s[1] if kind == "nchw" else s[-1] for s in shapes}
        expected = [sizes[1][axis] * first.grid[axis] / sizes[0][axis] for axis in (0, 1)]
        follows = all(
            abs(cells - wanted) <= max(1.0, 0.15 * cells)
            for cells, wanted in zip(second.grid, expected, strict=True)
        )
        if follows and len(channels) == 1 and first.extra == second.extra:
            return kind
    return None
