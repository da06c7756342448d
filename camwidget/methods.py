"""The methods: each one's descriptor (:class:`Method`: its function, what it needs,
its options) in the registry the engine and the panel read. The functions live in
:mod:`camwidget.cams`, :mod:`camwidget.components`, :mod:`camwidget.perturbation` and
:mod:`camwidget.attributions`; adding a method is one function and one entry here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import TYPE_CHECKING

from torch import Tensor, nn

from . import attributions, cams, legrad
from .components import KERNELS, eigencam, eigengradcam, kpcacam
from .errors import CamwidgetError
from .lrp import COMPOSITES as _LRP_COMPOSITES
from .method_context import MethodContext
from .perturbation import ablationcam, iscam, scorecam, sscam
from .targets import Class, Contrast, Target, most_alike

if TYPE_CHECKING:
    from .layers import LayerInfo


#: What a method may declare in ``Method.needs``: the gradient dy_c/dA at the layer (one
#: partial backward per class), or a :class:`MethodContext` field the engine fills in.
NEEDS = (
    "gradients", "class_weights", "score", "ablate", "guided", "relevance",
    "input_gradients", "masked", "rescaled", "hessian", "layer_gradients", "full_gradients",
    "attention_gradients",
)  # fmt: skip
#: The needs that run many model passes: such a method reports progress and can be
#: cancelled between batches.
PERTURBING = ("score", "ablate", "masked")
#: What a ``batched`` method may need: each image's share of these stacks into a batch.
BATCHABLE = ("gradients", "class_weights", "hessian")
#: The method list's groups, in the order the panel offers them.
GROUPS = ("class activation maps", "attributions at the pixels", "perturbation (slow)")


@dataclass(frozen=True)
class Option:
    """A setting of a method: its ``default``, what it does (``doc``), ``choices``
    where it takes one of a few values (the panel offers those in a list), ``classes``
    where it takes class indices (None or a tuple: the panel offers a box for names or
    indices), and ``keyword`` where many methods share it under one name (else
    ``{prefix}_{name}``)."""

    default: object
    doc: str = ""
    choices: tuple[object, ...] = ()
    keyword: str = ""
    classes: bool = False


MapFunction = Callable[[Tensor, Tensor, MethodContext], Tensor]


def finer_target(target: Target, output: object, options: Mapping[str, object]) -> Target:
    """Finer-CAM's target for a class: the class against ``against`` (None: the three
    classes whose logits are nearest its own), weighted by ``alpha``."""
    if isinstance(target, Contrast):  # already set apart (aug_smooth's copies)
        return target
    if not isinstance(target, Class) or not isinstance(output, Tensor) or output.dim() != 1:
        raise CamwidgetError(
            "Finer-CAM contrasts a class of a classifier with the classes most like it; "
            "for this target use Grad-CAM"
        )
    against = options["against"]
    others = tuple(against) if against else most_alike(output, target.index)
    return Contrast(target.index, others, float(options["alpha"]))


def _everywhere(layer: LayerInfo) -> bool:
    return True


def _any_model(model: nn.Module) -> bool:
    return True


def _where_cam_applies(layer: LayerInfo) -> bool:
    return layer.cam


@dataclass(frozen=True)
class Method:
    """Everything camwidget needs to know about one method.

    ``fn`` computes the raw map; ``needs``: what it reads besides A (see :data:`NEEDS`);
    ``rectified``: the paper ends with a ReLU, so a zero map means no positive evidence;
    ``class_agnostic``: the map is the same for every class; ``pixel_level``: the map
    lies on the input's pixels, not on a layer's grid; ``needs_layer``: the method reads
    a layer's activations; ``applies``: whether it is defined at a catalogued layer,
    and ``suits`` for the model, with ``requirement`` saying what it needs (its
    ``{layer}`` is filled in) and ``fallback`` the method to show instead;
    ``options``: its settings by short name, passed to ``fn`` in ``context.options``
    and part of the cache key; an explainer
    takes each as the keyword ``{prefix}_{name}`` (``prefix``: by default the method's
    name without punctuation); ``retarget(target, output, options)``: the target the
    method explains instead of the one asked for (``output``: the image's own);
    ``about``: one sentence on what it computes (by default the first of ``fn``'s
    docstring); ``batched``: ``fn`` also takes a batch of images, A and g (N, C, h, w)
    with the context's ``class_weights`` (N, C), ``target_score`` (N,), ``inputs`` (N,
    3, H, W) and ``hessian()`` (N, C, h, w), and returns (N, h, w) (it may need only
    :data:`BATCHABLE`).
    """

    name: str
    title: str
    fn: MapFunction
    needs: tuple[str, ...] = ()
    rectified: bool = True
    class_agnostic: bool = False
    pixel_level: bool = False
    needs_layer: bool = True
    applies: Callable[[LayerInfo], bool] = _everywhere
    suits: Callable[[nn.Module], bool] = _any_model
    requirement: str = ""
    fallback: str | None = None
    options: Mapping[str, Option] = field(default_factory=dict)
    prefix: str = ""
    retarget: Callable[[Target, Tensor, Mapping[str, object]], Target] | None = None
    about: str = ""
    batched: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise CamwidgetError(
                f"method {self.name!r} needs {sorted(unknown)}; a method may need {NEEDS}"
            )
        if self.batched and not set(self.needs) <= set(BATCHABLE):
            raise CamwidgetError(
                f"method {self.name!r} is batched but needs {self.needs}; a batched method "
                f"may need only {BATCHABLE}"
            )
        if not self.prefix:
            object.__setattr__(self, "prefix", re.sub(r"\W", "", self.name))

    @property
    def needs_gradients(self) -> bool:
        """It reads dy_c/dA: one partial backward per class."""
        return "gradients" in self.needs

    @property
    def group(self) -> str:
        """Where the method list shows it (one of :data:`GROUPS`)."""
        if self.perturbing:
            return GROUPS[2]
        return GROUPS[1] if self.pixel_level else GROUPS[0]

    @property
    def summary(self) -> str:
        """One sentence on what it computes, for the method list's tooltip."""
        if self.about:
            return self.about
        paragraph = " ".join((inspect.getdoc(self.fn) or "").split("\n\n")[0].split())
        plain = re.sub(r":\w+:`([^`]*)`", r"\1", paragraph).replace("``", "")
        return re.split(r"\. (?=[A-Z])", plain)[0].rstrip(".") + "."

    @property
    def signed(self) -> bool:
        """Its map lies on the input's pixels with both signs (shown from -1 to 1)."""
        return self.pixel_level and not self.rectified

    @property
    def perturbing(self) -> bool:
        """It runs many model passes (batched, with progress, cancellable)."""
        return any(need in PERTURBING for need in self.needs)

    def explains(self, target: Target, output: object, options: Mapping[str, object]) -> Target:
        """The target this method explains when asked for ``target``."""
        return target if self.retarget is None else self.retarget(target, output, options)

    def keyword(self, option: str) -> str:
        """The explainer's keyword for ``option``, e.g. ``scorecam_batch_size``."""
        return self.options[option].keyword or f"{self.prefix}_{option}"


GRADIENTS = ("gradients",)
AT_PIXELS = {"rectified": False, "pixel_level": True, "needs_layer": False}
AT_INPUTS = {"needs": ("input_gradients",), **AT_PIXELS}
#: A method on a layer's gradients and maps that also takes a batch.
ON_GRADIENTS = {"needs": GRADIENTS, "batched": True}
BATCH = Option(None, "inputs per forward and backward (None: 8 on CPU, 32 on GPU)")
SEED = Option(0, "the seed of the noise")
#: The option of the methods whose map is ReLU of a sum of per-channel maps.
SUMS = {
    "eigen_smooth": Option(
        False, "the first principal component of the weighted maps, not their sum",
        (False, True), keyword="eigen_smooth",
    )
}  # fmt: skip

#: The options of the methods that score masked inputs (Score-CAM, SS-CAM, IS-CAM).
MASKED = {
    "channels": Option(None, "score only this many most active channels (None: all)"),
    "batch_size": Option(None, "masked inputs per forward (None: 8 on CPU, 32 on GPU)"),
    **SUMS,
}

_BUILT_IN = (
    Method("gradcam", "Grad-CAM", cams.gradcam, options=SUMS, **ON_GRADIENTS),
    Method("gradcam++", "Grad-CAM++", cams.gradcam_plus_plus, options=SUMS, **ON_GRADIENTS),
    Method(
        "smoothgradcam++",
        "Smooth Grad-CAM++",
        cams.smoothgradcam_plus_plus,
        needs=("layer_gradients",),
        options={
            "samples": Option(4, "noisy copies of the input"),
            "sigma": Option(0.15, "the noise's standard deviation, a share of the input's range"),
            "seed": SEED,
            "batch_size": BATCH,
            **SUMS,
        },
        prefix="smoothgradcampp",
    ),
    Method("hirescam", "HiResCAM", cams.hirescam, options=SUMS, **ON_GRADIENTS),
    Method("xgradcam", "XGrad-CAM", cams.xgradcam, options=SUMS, **ON_GRADIENTS),
    Method("layercam", "LayerCAM", cams.layercam, options=SUMS, **ON_GRADIENTS),
    Method(
        "gradcam-elementwise",
        "Grad-CAM element-wise",
        cams.gradcam_elementwise,
        options=SUMS,
        **ON_GRADIENTS,
    ),
    Method("eigengradcam", "Eigen-Grad-CAM", eigengradcam, **ON_GRADIENTS),
    Method(
        "shapleycam",
        "ShapleyCAM",
        cams.shapleycam,
        needs=(*GRADIENTS, "hessian"),
        options=SUMS,
        batched=True,
    ),
    Method(
        "finercam",
        "Finer-CAM",
        cams.gradcam,
        options={
            "alpha": Option(1.0, "how much of the other classes' logits is taken away"),
            "against": Option(
                None, "the classes to set it apart from (None: the 3 nearest)", classes=True
            ),
            **SUMS,
        },
        retarget=finer_target,
        **ON_GRADIENTS,
        about="Finer-CAM (Zhang et al., CVPR 2025): Grad-CAM of the class against the "
        "classes most like it, what sets it apart.",
    ),
    Method(
        "legrad",
        "LeGrad",
        cams.legrad,
        needs=("attention_gradients",),
        needs_layer=False,
        options={"blocks": Option(2, "the last blocks averaged, as the authors (None: all)")},
        suits=lambda model: legrad.transformer_of(model) is not None,
        requirement=legrad.NOT_A_VIT,
        fallback="gradcam",
    ),
    Method(
        "scorecam",
        "Score-CAM",
        scorecam,
        needs=("score",),
        options=MASKED,
    ),
    Method(
        "sscam",
        "SS-CAM",
        sscam,
        needs=("masked",),
        options={
            "samples": Option(35, "noisy rounds over the channels"),
            "sigma": Option(2.0, "the noise's standard deviation on the [0, 1] masks"),
            "seed": SEED,
            **MASKED,
        },
    ),
    Method(
        "iscam",
        "IS-CAM",
        iscam,
        needs=("masked",),
        options={"samples": Option(10, "rounds along the path"), **MASKED},
    ),
    Method("eigencam", "Eigen-CAM", eigencam, rectified=False, class_agnostic=True, batched=True),
    Method(
        "kpcacam",
        "KPCA-CAM",
        kpcacam,
        class_agnostic=True,
        options={
            "kernel": Option("sigmoid", "the kernel over the cells' activations", KERNELS),
            "gamma": Option(None, "the kernel's scale (None: 1 / channels)"),
        },
    ),
    Method(
        "fem",
        "FEM",
        cams.fem,
        class_agnostic=True,
        options={
            "k": Option(2.0, "a cell counts where it exceeds its channel's mean by k std"),
            **SUMS,
        },
        batched=True,
    ),
    Method(
        "randomcam",
        "Random-CAM",
        cams.randomcam,
        class_agnostic=True,
        options={"seed": Option(0, "the seed of the random channel weights"), **SUMS},
        batched=True,
    ),
    Method(
        "ablationcam",
        "Ablation-CAM",
        ablationcam,
        needs=("ablate",),
        options={
            "batch_size": Option(None, "ablated passes per forward (None: 8 on CPU, 32 on GPU)"),
            **SUMS,
        },
        prefix="ablation",
    ),
    Method(
        "guided-backprop",
        "Guided Backprop",
        cams.guided_backprop,
        needs=("guided",),
        rectified=False,
        pixel_level=True,
        needs_layer=False,
    ),
    Method(
        "lrp",
        "LRP",
        cams.lrp,
        needs=("relevance",),
        rectified=False,
        pixel_level=True,
        needs_layer=False,
        options={
            "composite": Option(_LRP_COMPOSITES[0], "zennit's rules by layer type", _LRP_COMPOSITES)
        },
    ),
    Method(
        "saliency",
        "Saliency",
        attributions.saliency,
        options={"abs": Option(True, "the gradient's magnitude (or its sign too)", (True, False))},
        **AT_INPUTS,
    ),
    Method("input-x-gradient", "Input × Gradient", attributions.input_x_gradient, **AT_INPUTS),
    Method(
        "integrated-gradients",
        "Integrated Gradients",
        attributions.integrated_gradients,
        options={"steps": Option(50, "Gauss-Legendre points on the path"), "batch_size": BATCH},
        prefix="ig",
        **AT_INPUTS,
    ),
    Method(
        "smoothgrad",
        "SmoothGrad",
        attributions.smoothgrad,
        options={
            "of": Option("saliency", "the method averaged", attributions.SMOOTHED),
            "samples": Option(16, "noisy copies of the input"),
            "sigma": Option(0.15, "the noise's standard deviation, a share of the input's range"),
            "seed": SEED,
            "batch_size": BATCH,
        },
        **AT_INPUTS,
    ),
    Method(
        "gradientshap",
        "GradientSHAP",
        attributions.gradientshap,
        options={
            "samples": Option(16, "points drawn on the path from the zero baseline"),
            "sigma": Option(0.0, "noise on the input, a share of the input's range"),
            "seed": SEED,
            "batch_size": BATCH,
        },
        **AT_INPUTS,
    ),
    Method(
        "occlusion",
        "Occlusion",
        attributions.occlusion,
        needs=("masked",),
        options={
            "window": Option(16, "side of the zeroed square, in pixels of the model input"),
            "stride": Option(8, "step between squares, in pixels (at most the window)"),
            "batch_size": Option(None, "occluded inputs per forward (None: 8 on CPU, 32 on GPU)"),
        },
        **AT_PIXELS,
    ),
    Method("deeplift", "DeepLIFT", attributions.deeplift, needs=("rescaled",), **AT_PIXELS),
    Method(
        "fullgrad",
        "FullGrad",
        attributions.fullgrad,
        needs=("full_gradients",),
        **{**AT_PIXELS, "rectified": True},
    ),
    Method(
        "guided-gradcam",
        "Guided Grad-CAM",
        cams.guided_gradcam,
        needs=(*GRADIENTS, "guided"),
        rectified=False,
        pixel_level=True,
    ),
    Method(
        "cam",
        "CAM",
        cams.cam,
        needs=("class_weights",),
        rectified=False,
        applies=_where_cam_applies,
        batched=True,
        requirement="CAM needs the layer to feed global average pooling and then the final "
        "fully connected layer, and the model's logits are not fc(GAP({layer}))",
        fallback="gradcam",
    ),
)

#: The test-time augmentation of every method that reads a layer (see
#: :mod:`camwidget.smoothing`).
AUG_SMOOTH = Option(
    False, "average the maps of the input flipped and at 0.9, 1, 1.1 times", (False, True),
    keyword="aug_smooth",
)  # fmt: skip


def _smoothable(method: Method) -> Method:
    if method.pixel_level or not method.needs_layer:
        return method
    return replace(method, options={**method.options, "aug_smooth": AUG_SMOOTH})


#: name -> :class:`Method`, in the order the panel offers them. Adding a method is one
#: function and one entry here.
REGISTRY: dict[str, Method] = {method.name: _smoothable(method) for method in _BUILT_IN}

#: Method names the engine supports (contract): the built-in ones.
METHODS: tuple[str, ...] = tuple(REGISTRY)


def keywords() -> dict[str, tuple[Method, str]]:
    """Every method option as an explainer keyword -> (method, short name): the first
    registered method that declares a keyword owns it."""
    return _keywords(tuple(REGISTRY))


@cache  # read on every attribute an explainer sets
def _keywords(names: tuple[str, ...]) -> dict[str, tuple[Method, str]]:
    found: dict[str, tuple[Method, str]] = {}
    for spec in map(REGISTRY.get, names):
        for option in spec.options:
            found.setdefault(spec.keyword(option), (spec, option))
    return found


def where_it_applies(spec: Method, layers: list[LayerInfo]) -> str:
    """Which of ``layers`` ``spec`` applies at, in words, with its fallback."""
    where = [layer.name for layer in layers if spec.applies(layer)]
    found = f"applies at: {', '.join(where)}." if where else "applies at no layer of this model."
    suggestion = f" Use method={spec.fallback!r}." if spec.fallback else ""
    return f"{spec.title} {found}{suggestion}"


def get(name: str) -> Method:
    """The registered method ``name``, or an error that lists the known ones."""
    if name not in REGISTRY:
        raise CamwidgetError(f"unknown method {name!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]
