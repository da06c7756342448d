"""Images made ready for a model: read, fitted, preprocessed, and resized to the one
input size a model takes when it turns out to take only one."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from . import framing, images
from .errors import CamwidgetError
from .explanation import PreparedImage
from .inputs import COMMON_SIZES, ModelInput

Preprocess = Callable[[object], Tensor | Mapping[str, object]]


class Preparation:
    """How images become model inputs for one model: its ``preprocess`` (None: the
    model's own normalisation, ``model_input``), images larger than ``max_side``
    downscaled, inputs on ``device`` as ``dtype``. ``worked_at`` holds the input sizes
    the model has taken."""

    def __init__(
        self,
        model_input: ModelInput,
        preprocess: Preprocess | None,
        max_side: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model_input, self.preprocess, self.max_side = model_input, preprocess, max_side
        self.device, self.dtype = device, dtype
        self.worked_at: set[tuple[int, int]] = set()
        self._probed: dict[tuple[int, int], framing.Probed] = {}

    def __call__(self, image: object) -> PreparedImage:
        """Read and preprocess ``image`` (path, bytes, PIL, HWC array, CHW tensor)."""
        if isinstance(image, PreparedImage):
            if not self._resizes(image):
                return image
            image = image.source  # prepared before the model's input size was learned
        if isinstance(image, Tensor):
            inputs = image.detach()
            if inputs.dim() == 3:
                inputs = inputs[None]
            source, notes, frame = inputs, (), None
            size = (inputs.shape[-2], inputs.shape[-1])
        else:
            source = images.to_rgb(image)
            fitted, note = images.fit(source, self.max_side)
            probed = self._probe(fitted.shape[:2])
            frame = probed.frame if probed else None
            shown = (note, self._resize_note(fitted), self._gray_note(), probed and probed.say())
            notes = tuple(n for n in shown if n)
            inputs = self._preprocess(fitted)
            size = source.shape[:2]
        if (
            inputs.dim() != 4
            or inputs.shape[0] != 1
            or inputs.shape[1] not in (1, 3)
            or not inputs.is_floating_point()
        ):
            raise CamwidgetError(
                f"a preprocessed image must be a float tensor (C, H, W) or (1, C, H, W), "
                f"C = 3 (RGB) or 1 (gray); got {tuple(inputs.shape)} {inputs.dtype}"
            )
        inputs = inputs.to(self.device, self.dtype).contiguous()
        return PreparedImage(inputs, size, notes, source, frame)

    def probe(self, size: tuple[int, int] | None = None) -> Tensor:
        """A random input at ``size`` (None: the model's size, 224×224 where it takes
        any), with the model's channels."""
        size = size or self.model_input.size or self.model_input.preferred
        shape = (1, self.model_input.channels, *size)
        probe = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        return probe.to(self.device, self.dtype)

    def learn_input_size(
        self, image: PreparedImage | None, forward: Callable[[Tensor], object]
    ) -> bool:
        """After the model failed on ``image`` (None: on :meth:`probe`): whether it takes
        the size it was made for, or else one of :data:`~camwidget.inputs.COMMON_SIZES`,
        instead (``forward(probe)`` tries each: it raises a CamwidgetError where the
        model fails); then every image is resized to it."""

        def works(probe: Tensor) -> bool:
            try:
                forward(probe)
            except CamwidgetError:
                return False
            return True

        preferred = self.model_input.preferred
        if self.preprocess is not None or self.model_input.size is not None:
            return False
        if image is not None and not isinstance(image.source, np.ndarray):
            return False  # a tensor: the user's own input, at the size they chose
        if self.worked_at - {preferred}:
            return False  # the model has taken another size: it does not need one size
        failed = preferred if image is None else tuple(image.inputs.shape[-2:])
        candidates = [size for size in dict.fromkeys([preferred, *COMMON_SIZES]) if size != failed]
        size = next((size for size in candidates if works(self.probe(size))), None)
        if size is None:
            return False
        self.model_input = self.model_input.at_size(
            size, f"it failed at {failed[1]}×{failed[0]} and works at {size[1]}×{size[0]}"
        )
        return True

    def input_bounds(self) -> tuple[Tensor, Tensor] | None:
        """The lowest and highest model input, per channel (1, 3, 1, 1), where the model's
        normalisation is known (pixels 0 and 1 normalised: the model's own, or what the
        preprocess gave black and white probes), else None."""
        if self.preprocess is None:
            mean = torch.tensor(self.model_input.mean, device=self.device).reshape(1, -1, 1, 1)
            std = torch.tensor(self.model_input.std, device=self.device).reshape(1, -1, 1, 1)
            return (0.0 - mean) / std, (1.0 - mean) / std
        found = [p for p in self._probed.values() if p.low is not None]
        if not found:
            return None
        low, high = (torch.tensor(v, dtype=torch.float32) for v in (found[-1].low, found[-1].high))
        return low.reshape(1, -1, 1, 1).to(self.device), high.reshape(1, -1, 1, 1).to(self.device)

    def _probe(self, size: tuple[int, int]) -> framing.Probed | None:
        """Where the preprocess puts a photo of ``size`` (H, W), found once per size;
        None without a preprocess (the model's own resizing stretches the photo)."""
        if self.preprocess is None:
            return None
        if size not in self._probed:
            try:
                self._probed[size] = framing.probe(self._preprocess, size)
            except (CamwidgetError, ValueError):  # the photo itself will say what failed
                return None
        return self._probed[size]

    def _resizes(self, image: PreparedImage) -> bool:
        """Whether ``image`` must be prepared again: the model's input size is now known
        and ``image`` was read from pixels at another size."""
        size = self.model_input.size
        return (
            self.preprocess is None
            and size is not None
            and isinstance(image.source, np.ndarray)
            and tuple(image.inputs.shape[-2:]) != size
        )

    def _resize_note(self, rgb: np.ndarray) -> str | None:
        size = self.model_input.size
        if self.preprocess is not None or size is None or rgb.shape[:2] == size:
            return None
        return f"resized to {size[1]}×{size[0]} for the model ({self.model_input.source})"

    def _gray_note(self) -> str | None:
        if self.preprocess is not None or self.model_input.channels != 1:
            return None
        return "in gray for the model: its first convolution takes one channel"

    def _preprocess(self, rgb: np.ndarray) -> Tensor:
        if self.preprocess is None:
            return self.model_input(rgb)
        from PIL import Image

        try:
            inputs = self.preprocess(Image.fromarray(rgb))
        except Exception as error:
            raise CamwidgetError(
                f"the preprocess function failed: {type(error).__name__}: {error}"
            ) from error
        inputs = pixel_values(inputs)
        return inputs[None] if inputs.dim() == 3 else inputs


def pixel_values(output: object) -> Tensor:
    """What a preprocess returned, as the model's input tensor: a tensor, or a mapping
    with ``pixel_values`` (a Hugging Face image processor's ``BatchFeature``: a tensor,
    an array, or a list of one image's array)."""
    if isinstance(output, Mapping):
        if "pixel_values" not in output:
            raise CamwidgetError(
                "the preprocess returned a mapping without 'pixel_values' (it has "
                f"{', '.join(map(repr, output)) or 'nothing'}): pass a function that returns "
                "the model's input tensor, or the model's Hugging Face image processor"
            )
        output = output["pixel_values"]
        if isinstance(output, (list, tuple)) and len(output) == 1:
            output = output[0]
        if isinstance(output, np.ndarray):
            output = torch.from_numpy(np.ascontiguousarray(output))
    if not isinstance(output, Tensor):
        raise CamwidgetError(
            "the preprocess function must return a torch tensor (or a mapping with "
            f"'pixel_values', as a Hugging Face image processor does), not "
            f"{type(output).__name__}"
        )
    return output
