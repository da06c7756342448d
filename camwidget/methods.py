"""Class activation map methods as pure functions.

Each method takes the activations A (C, h, w) of one layer for one image, the gradients
g = dy_c/dA (C, h, w) of the target's logit y_c, and a :class:`MethodContext`, and
returns the method's raw map (h, w) at feature resolution, exactly as its paper defines
it (including the ReLU where the paper has one), before upsampling and normalisation;
pixel-level methods return an attribution (3, H, W) at the model input's size.
Nothing here knows about hooks, caches or widgets.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from . import attributions
from .components import KERNELS, eigencam, eigengradcam, kpcacam
from .errors import CamwidgetError
from .lrp import COMPOSITES as _LRP_COMPOSITES
from .method_context import MethodContext
from .perturbation import ablationcam, scorecam
from .targets import Class, Contrast, Target, most_alike

if TYPE_CHECKING:
    from .layers import LayerInfo


#: What a method may declare in ``Method.needs``: the gradient dy_c/dA at the layer (one
#: partial backward per class), or a :class:`MethodContext` field the engine fills in.
NEEDS = (
    "gradients", "class_weights", "score", "ablate", "guided", "relevance",
    "input_gradients", "masked", "rescaled", "hessian",
)  # fmt: skip
#: The needs that run many model passes: such a method reports progress and can be
#: cancelled between batches.
PERTURBING = ("score", "ablate", "masked")
#: The method list's groups, in the order the panel offers them.
GROUPS = ("class activation maps", "attributions at the pixels", "perturbation (slow)")


@dataclass(frozen=True)
class Option:
    """A setting of a method: its ``default``, what it does (``doc``), and ``choices``
    where it takes one of a few values (the panel offers those in a list)."""

    default: object
    doc: str = ""
    choices: tuple[object, ...] = ()


MapFunction = Callable[[Tensor, Tensor, MethodContext], Tensor]


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """sum_k weights_k * A^k for weights (C,) and activations (C, h, w)."""
    return torch.einsum("k,khw->hw", weights, activations)


def cam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """CAM (Zhou et al., CVPR 2016): M = sum_k W[c, k] A^k, with no ReLU.

    W is the final fully connected layer fed by global average pooling of A, so
    mean(M) + b_c = y_c exactly. Needs ``context.class_weights``.
    """
    if context.class_weights is None:
        raise CamwidgetError(
            "CAM explains one class of a classifier with the final layer's weights for that "
            "class; for this target use Grad-CAM"
        )
    return _weighted_sum(context.class_weights.to(activations.dtype), activations)


def gradcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): M = ReLU(sum_k w_k A^k).

    w_k = (1 / hw) sum_ij g^k_ij, the spatial mean of the gradient of the logit y_c.
    At a GAP -> FC layer w_k = W[c, k] / hw, so M = ReLU(CAM) / hw.
    """
    weights = gradients.mean(dim=(1, 2))
    return torch.relu(_weighted_sum(weights, activations))


def gradcam_plus_plus(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19): M = ReLU(sum_k w_k A^k).

    alpha^k_ij = g^2 / (2 g^2 + (sum_ab A^k_ab) g^3), with alpha = 0 where g = 0 or the
    denominator is 0; w_k = sum_ij alpha^k_ij ReLU(g^k_ij). Evaluated in float64 with
    no epsilon.
    """
    a, g = activations.double(), gradients.double()
    g2 = g * g
    denominator = 2.0 * g2 + a.sum(dim=(1, 2), keepdim=True) * g2 * g
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    alpha = torch.where((g != 0) & (denominator != 0), g2 / safe, torch.zeros_like(g))
    weights = (alpha * torch.relu(g)).sum(dim=(1, 2))
    return torch.relu(_weighted_sum(weights, a)).to(activations.dtype)


def hirescam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """HiResCAM (Draelos & Carin, 2020): M = ReLU(sum_k g^k * A^k), elementwise."""
    return torch.relu((gradients * activations).sum(dim=0))


def xgradcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020): M = ReLU(sum_k w_k A^k).

    w_k = sum_ij g^k_ij A^k_ij / sum_ij A^k_ij, and w_k = 0 where sum_ij A^k_ij = 0.
    """
    total = activations.sum(dim=(1, 2))
    numerator = (gradients * activations).sum(dim=(1, 2))
    safe = torch.where(total == 0, torch.ones_like(total), total)
    weights = torch.where(total == 0, torch.zeros_like(total), numerator / safe)
    return torch.relu(_weighted_sum(weights, activations))


def layercam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 2021): M = ReLU(sum_k ReLU(g^k) * A^k)."""
    return torch.relu((torch.relu(gradients) * activations).sum(dim=0))


def shapleycam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """ShapleyCAM (Cai et al., 2025; pytorch-grad-cam's): M = ReLU(sum_k w_k A^k),
    w_k = the spatial mean of g^k - (H A)^k / 2, H the Hessian of y_c with respect to
    A: a second-order estimate of each channel's Shapley value. Where y_c is piecewise
    linear in A (ReLUs, pooling, linear layers) H A = 0 and it is Grad-CAM."""
    if context.hessian is None:
        raise ValueError("ShapleyCAM needs the Hessian-vector product")
    weights = (gradients - 0.5 * context.hessian().to(gradients)).mean(dim=(1, 2))
    return torch.relu(_weighted_sum(weights, activations))


def gradcam_elementwise(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Grad-CAM element-wise (pytorch-grad-cam): M = sum_k ReLU(g^k ⊙ A^k)."""
    return torch.relu(gradients * activations).sum(dim=0)


def randomcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Random-CAM, the baseline for the metrics: M = ReLU(sum_k w_k A^k), w_k drawn
    uniformly from [-1, 1) by a generator seeded with the option ``seed``."""
    generator = torch.Generator().manual_seed(int(context.options["seed"]))
    weights = torch.rand(activations.shape[0], generator=generator, dtype=torch.float64)
    return torch.relu(_weighted_sum((2 * weights - 1).to(activations), activations))


def fem(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """FEM, the feature explanation method (Fuad et al., IPTA 2020), as pytorch-grad-cam
    computes it: M = ReLU(sum_k w_k A^k), w_k the share of the cells of A^k above
    mean(A^k) + k std(A^k) (the option ``k``; the standard deviation over the cells,
    uncorrected). Class-agnostic."""
    a = activations.double()
    cut = a.mean(dim=(1, 2), keepdim=True) + float(context.options["k"]) * a.std(
        dim=(1, 2), keepdim=True, correction=0
    )
    weights = (a > cut).double().mean(dim=(1, 2))
    return torch.relu(_weighted_sum(weights, a)).to(activations.dtype)


def guided_backprop(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Guided Backpropagation (Springenberg et al., ICLR-W 2015): dy_c/dX (3, H, W) with
    every ReLU passing back only positive gradients where its input is positive. Pixel
    level and signed; reads no layer."""
    if context.guided is None:
        raise ValueError("guided backpropagation needs the guided gradient")
    return context.guided()


def guided_gradcam(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017, §3): guided backpropagation (3, H, W)
    times the layer's Grad-CAM map upsampled (bilinear) to the input's size."""
    if context.guided is None or context.input_size is None:
        raise ValueError("Guided Grad-CAM needs the guided gradient and the input size")
    coarse = gradcam(activations, gradients, context)
    fine = F.interpolate(
        coarse[None, None], size=context.input_size, mode="bilinear", align_corners=False
    )[0, 0]
    return context.guided() * fine.to(activations.device)


def lrp(activations: Tensor, gradients: Tensor, context: MethodContext) -> Tensor:
    """Layer-wise Relevance Propagation (Bach et al., PLoS ONE 2015) under a zennit
    composite: the relevance R (3, H, W) of each input pixel, starting from the
    target's score at the output, so that sum R ~ y_c. Pixel level, signed; reads no
    layer."""
    if context.relevance is None:
        raise ValueError("LRP needs the relevance")
    return context.relevance()


def finer_target(target: Target, output: object, options: Mapping[str, object]) -> Target:
    """Finer-CAM's target for a class: the class against ``against`` (None: the three
    classes whose logits are nearest its own), weighted by ``alpha``."""
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
    with ``requirement`` saying what it needs there (its ``{layer}`` is filled in) and
    ``fallback`` the method to show instead; ``options``: its settings by short name,
    passed to ``fn`` in ``context.options`` and part of the cache key; an explainer
    takes each as the keyword ``{prefix}_{name}`` (``prefix``: by default the method's
    name without punctuation); ``retarget(target, output, options)``: the target the
    method explains instead of the one asked for (``output``: the image's own);
    ``about``: one sentence on what it computes (by default the first of ``fn``'s
    docstring).
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
    requirement: str = ""
    fallback: str | None = None
    options: Mapping[str, Option] = field(default_factory=dict)
    prefix: str = ""
    retarget: Callable[[Target, Tensor, Mapping[str, object]], Target] | None = None
    about: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise CamwidgetError(
                f"method {self.name!r} needs {sorted(unknown)}; a method may need {NEEDS}"
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
    def perturbing(self) -> bool:
        """It runs many model passes (batched, with progress, cancellable)."""
        return any(need in PERTURBING for need in self.needs)

    def explains(self, target: Target, output: object, options: Mapping[str, object]) -> Target:
        """The target this method explains when asked for ``target``."""
        return target if self.retarget is None else self.retarget(target, output, options)

    def keyword(self, option: str) -> str:
        """The explainer's keyword for ``option``, e.g. ``scorecam_batch_size``."""
        return f"{self.prefix}_{option}"


GRADIENTS = ("gradients",)
AT_PIXELS = {"rectified": False, "pixel_level": True, "needs_layer": False}
AT_INPUTS = {"needs": ("input_gradients",), **AT_PIXELS}
BATCH = Option(None, "inputs per forward and backward (None: 8 on CPU, 32 on GPU)")
SEED = Option(0, "the seed of the noise")

_BUILT_IN = (
    Method("gradcam", "Grad-CAM", gradcam, needs=GRADIENTS),
    Method("gradcam++", "Grad-CAM++", gradcam_plus_plus, needs=GRADIENTS),
    Method("hirescam", "HiResCAM", hirescam, needs=GRADIENTS),
    Method("xgradcam", "XGrad-CAM", xgradcam, needs=GRADIENTS),
    Method("layercam", "LayerCAM", layercam, needs=GRADIENTS),
    Method("gradcam-elementwise", "Grad-CAM element-wise", gradcam_elementwise, needs=GRADIENTS),
    Method("eigengradcam", "Eigen-Grad-CAM", eigengradcam, needs=GRADIENTS),
    Method("shapleycam", "ShapleyCAM", shapleycam, needs=(*GRADIENTS, "hessian")),
    Method(
        "finercam",
        "Finer-CAM",
        gradcam,
        needs=GRADIENTS,
        options={
            "alpha": Option(1.0, "how much of the other classes' logits is taken away"),
            "against": Option(None, "the classes to set it apart from (None: the 3 nearest)"),
        },
        retarget=finer_target,
        about="Finer-CAM (Zhang et al., CVPR 2025): Grad-CAM of the class against the "
        "classes most like it, what sets it apart.",
    ),
    Method(
        "scorecam",
        "Score-CAM",
        scorecam,
        needs=("score",),
        options={
            "batch_size": Option(None, "masked inputs per forward (None: 8 on CPU, 32 on GPU)"),
            "channels": Option(None, "score only this many most active channels (None: all)"),
        },
    ),
    Method("eigencam", "Eigen-CAM", eigencam, rectified=False, class_agnostic=True),
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
        fem,
        class_agnostic=True,
        options={"k": Option(2.0, "a cell counts where it exceeds its channel's mean by k std")},
    ),
    Method(
        "randomcam",
        "Random-CAM",
        randomcam,
        class_agnostic=True,
        options={"seed": Option(0, "the seed of the random channel weights")},
    ),
    Method(
        "ablationcam",
        "Ablation-CAM",
        ablationcam,
        needs=("ablate",),
        options={
            "batch_size": Option(None, "ablated passes per forward (None: 8 on CPU, 32 on GPU)")
        },
        prefix="ablation",
    ),
    Method(
        "guided-backprop",
        "Guided Backprop",
        guided_backprop,
        needs=("guided",),
        rectified=False,
        pixel_level=True,
        needs_layer=False,
    ),
    Method(
        "lrp",
        "LRP",
        lrp,
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
        "guided-gradcam",
        "Guided Grad-CAM",
        guided_gradcam,
        needs=(*GRADIENTS, "guided"),
        rectified=False,
        pixel_level=True,
    ),
    Method(
        "cam",
        "CAM",
        cam,
        needs=("class_weights",),
        rectified=False,
        applies=_where_cam_applies,
        requirement="CAM needs the layer to feed global average pooling and then the final "
        "fully connected layer, and the model's logits are not fc(GAP({layer}))",
        fallback="gradcam",
    ),
)

#: name -> :class:`Method`, in the order the panel offers them. Adding a method is one
#: function and one entry here.
REGISTRY: dict[str, Method] = {method.name: method for method in _BUILT_IN}

#: Method names the engine supports (contract): the built-in ones.
METHODS: tuple[str, ...] = tuple(REGISTRY)


def keywords() -> dict[str, tuple[Method, str]]:
    """Every method option as an explainer keyword -> (method, short name): the first
    registered method that declares a keyword owns it."""
    found: dict[str, tuple[Method, str]] = {}
    for spec in REGISTRY.values():
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
