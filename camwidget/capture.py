"""Hooks and the model-state guard: the one place where camwidget touches the model.

:func:`forward` runs the model once and keeps the output of every module whose output
is a feature map, in whatever layout (:mod:`camwidget.layouts`); :func:`backward` takes
the gradient of a score with respect to the kept maps in one pass. The model is left
exactly as it was found.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import folding, layouts, outputs
from .errors import CamwidgetError
from .layouts import Layout, Reshape

#: Why a map whose tensor autograd did not record (``torch.no_grad``, ``detach``) is left out.
NO_GRAPH = "its output does not depend on the input through autograd"


@contextmanager
def guarded(model: nn.Module) -> Iterator[list[RemovableHandle]]:
    """Put ``model`` in eval mode with frozen parameters; restore everything on exit.

    Yields a list to which the caller appends hook handles; they are removed on exit,
    and every module's ``training`` flag and every parameter's ``requires_grad`` are
    restored, also when the body raises. A model with lazy parameters not yet made is
    refused in words: a pass would make them, changing the model.
    """
    modules = list(model.modules())  # one walk of the tree: this runs before every pass
    params = list(
        dict.fromkeys(p for m in modules for p in m._parameters.values() if p is not None)
    )
    if any(isinstance(param, nn.parameter.UninitializedParameter) for param in params):
        raise CamwidgetError(
            "the model has lazy layers (e.g. nn.LazyLinear) whose weights are not made "
            "yet: run it once on an input of its own first"
        )
    training = [module for module in modules if module.training]
    trainable = [param for param in params if param.requires_grad]
    handles: list[RemovableHandle] = []
    try:
        for module in training:
            module.training = False
        for param in trainable:
            param.requires_grad_(False)
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        for module in training:
            module.training = True
        for param in trainable:
            param.requires_grad_(True)


def called(model: nn.Module, inputs: Tensor) -> object:
    """``model(inputs)``; a failure of the model is told in words."""
    try:
        return model(inputs)
    except CamwidgetError:
        raise
    except Exception as error:
        raise CamwidgetError(
            f"the model failed on this input of shape {tuple(inputs.shape)}: "
            f"{type(error).__name__}: {error}"
        ) from error


@dataclass
class Capture:
    """One forward pass: the model's output (the part to explain, see
    :mod:`camwidget.outputs`) and the kept feature maps, still attached to the graph, each
    in its own layout (``layouts`` reads them as (N, C, h, w)); ``inputs``: the input,
    where autograd recorded the pass from it (else None)."""

    output: Tensor | list[dict]
    activations: dict[str, Tensor]
    kinds: dict[str, str]
    layouts: dict[str, Layout] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    classifier: str | None = None
    modified: set[str] = field(default_factory=set)
    inputs: Tensor | None = None

    @property
    def logits(self) -> Tensor | None:
        """The class logits (N, K) where the model is a classifier, else None."""
        output = self.output
        return output if isinstance(output, Tensor) and output.dim() == 2 else None

    def on_host(self) -> Capture:
        """The output alone, detached and copied to the CPU in one go: what picks targets
        and reads numbers without a wait on the GPU for each image."""
        output = self.output
        if isinstance(output, Tensor):
            output = output.detach().cpu()
        else:
            output = [
                {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in row.items()}
                for row in output
            ]
        return Capture(output, {}, self.kinds, classifier=self.classifier)


class _Recorder:
    """The forward hooks of one pass: keeps every feature map (see :mod:`layouts`), says
    why it left a module out, and hands on copies of the maps named in ``copy`` (None:
    all). With ``graph_from``, the pass runs without autograd until that module's output,
    which becomes a leaf of the graph recorded from there on. ``reshape`` maps layer
    names to the user's functions output -> (N, C, h, w); ``proof`` to the kind of map
    a layer was proven to be, or why it is none (:func:`camwidget.proof.prove`)."""

    def __init__(
        self,
        inputs: Tensor,
        copy: Collection[str] | None,
        graph_from: str | None = None,
        reshape: Mapping[str, Reshape] | None = None,
        proof: Mapping[str, str] | None = None,
    ) -> None:
        self.input_size = (inputs.shape[-2], inputs.shape[-1])
        self.batch = inputs.shape[0]
        self.copy = copy
        self.graph_from = graph_from
        self.reshape, self.proof = reshape or {}, proof or {}
        self.kept: dict[str, Tensor] = {}
        self.kinds: dict[str, str] = {}
        self.layouts: dict[str, Layout] = {}
        self.skipped: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self.linears: list[str] = []
        self.handed_on: dict[str, tuple[Tensor, int]] = {}  # name -> (passed on, version)
        self.copies: dict[int, tuple[Tensor, str]] = {}  # id -> (a copy we made, whose)

    def hook(self, name: str, module: nn.Module) -> Callable[[nn.Module, object, object], object]:
        """A forward hook for ``module``, called ``name``."""
        linear = isinstance(module, nn.Linear)
        last = linear or isinstance(module, nn.LayerNorm)  # works on the last dimension
        kind = type(module).__name__

        def record(module: nn.Module, args: object, output: object) -> object:
            self.calls[name] += 1
            if linear:
                self.linears.append(name)
            if not (
                isinstance(output, Tensor) and output.dim() in (3, 4) and output.is_floating_point()
            ):
                return None
            handed = None
            if name == self.graph_from and self.calls[name] == 1:
                torch.set_grad_enabled(True)  # the rest of the pass records the graph
                output = output.detach().requires_grad_(True)
                handed = output.clone()  # in-place ops downstream must not touch the leaf
            layout = self._layout(name, output, last)
            reason = layout if isinstance(layout, str) else self._refusal(name, output)
            if reason is not None:
                self.kept.pop(name, None)
                self.handed_on.pop(name, None)
                self.skipped[name] = reason
                return None
            self.kinds[name] = kind
            self.layouts[name] = layout
            if handed is not None:
                self.kept[name] = output
                return handed
            return self._keep(name, output)

        return record

    def _layout(self, name: str, output: Tensor, channels_last: bool) -> Layout | str:
        """The layout of ``output``: the user's reshape for ``name``, or found from its
        shape (``channels_last``: the module works on the last dimension); a string says
        why it is not a map."""
        if name not in self.reshape:
            known = self.proof.get(name)
            if known is not None and known not in layouts.KINDS:
                return known
            shape = tuple(output.shape)
            return layouts.find(shape, self.input_size, self.batch, channels_last, known)
        try:
            shape = tuple(self.reshape[name](output.detach()).shape)
        except Exception as error:
            raise CamwidgetError(
                f"the reshape given for layer {name!r} failed on its output "
                f"{tuple(output.shape)}: {type(error).__name__}: {error}"
            ) from error
        if len(shape) != 4 or shape[0] != self.batch:
            raise CamwidgetError(
                f"the reshape given for layer {name!r} must return (N, C, h, w) with "
                f"N = {self.batch}; it turned {tuple(output.shape)} into {shape}"
            )
        return layouts.Layout("custom", shape[2:], reshape=self.reshape[name])

    def _refusal(self, name: str, output: Tensor) -> str | None:
        """Why ``output`` is not kept as the map of ``name``, or None."""
        if self.calls[name] > 1:
            return (
                f"runs {self.calls[name]} times per forward pass (one module reused), so "
                "its output is not one feature map; the maps it produces are "
                "available as the outputs of the blocks that use it"
            )
        if not output.requires_grad:
            return NO_GRAPH
        return None

    def _keep(self, name: str, output: Tensor) -> Tensor | None:
        """Keep ``output``; return the copy to hand on downstream, if one is made."""
        duplicate, source = self.copies.get(id(output), (None, ""))
        if (
            duplicate is output
            and source in self.kept
            and output._version == self.handed_on[source][1]
        ):
            self.kept[name] = self.kept[source]  # our copy, passed on unchanged: same map
            return None
        self.kept[name] = output
        if self.copy is not None and name not in self.copy:
            self.handed_on[name] = (output, output._version)
            return None
        duplicate = output.clone()
        self.copies[id(duplicate)] = (duplicate, name)
        self.handed_on[name] = (duplicate, duplicate._version)
        return duplicate

    def capture(self, output: Tensor | list[dict]) -> Capture:
        """What the pass recorded, with the model's ``output``."""
        return Capture(
            output=output,
            activations=self.kept,
            kinds=self.kinds,
            layouts=self.layouts,
            skipped=self.skipped,
            classifier=self.linears[-1] if self.linears else None,
            modified={n for n, (t, version) in self.handed_on.items() if t._version != version},
        )


def forward(
    model: nn.Module,
    inputs: Tensor,
    layers: Collection[str] | None = None,
    copy: Collection[str] | None = None,
    graph_from: str | None = None,
    reshape: Mapping[str, Reshape] | None = None,
    select: outputs.Select = outputs.select,
    proof: Mapping[str, str] | None = None,
) -> Capture:
    """Run ``model`` on ``inputs`` once, keeping the module outputs that are feature maps
    (:func:`layouts.find`; ``reshape``: the user's layouts, by layer name).

    ``layers``: the module names to keep (None: every module). A module that runs more
    than once per forward is left out, with the reason in ``skipped``. ``classifier``
    is the name of the last ``nn.Linear`` that ran.

    In-place operations later in the model (an ``inplace=True`` ReLU, ``out +=
    identity``) would rewrite a kept map. So the outputs of the modules in ``copy``
    (None: all) are handed on downstream as copies, and ``modified`` names the kept
    outputs that were rewritten in place downstream (their copies, where copied). A
    capture whose ``modified`` holds an uncopied name is wrong: run it again with that
    name in ``copy``. A container passing on a copy unchanged shares the kept map of
    the module inside it.

    ``graph_from``: a layer in ``layers``; autograd records the pass only from its
    output on (the cheapest pass for gradients at that layer and later ones). With
    ``layers``, the batch norms of other layers are folded (:mod:`folding`). ``select``
    picks the part of the model's output to explain; ``proof``: see :class:`_Recorder`.
    """
    recorder = _Recorder(inputs, copy, graph_from, reshape, proof)
    wanted = None if layers is None else set(layers)
    folds = nullcontext() if wanted is None else folding.folded(model, inputs, wanted)
    with guarded(model) as handles, torch.set_grad_enabled(graph_from is None), folds:
        for name, module in model.named_modules():
            if name and (wanted is None or name in wanted or isinstance(module, nn.Linear)):
                handles.append(module.register_forward_hook(recorder.hook(name, module)))
        inputs = inputs.detach().requires_grad_(graph_from is None)
        output = called(model, inputs)
    selected = select(output, tuple(inputs.shape[-2:]))
    if outputs.rows(selected) != inputs.shape[0]:
        raise CamwidgetError(
            f"the model returned {outputs.rows(selected)} outputs for {inputs.shape[0]} images"
        )
    return replace(recorder.capture(selected), inputs=inputs if graph_from is None else None)


def input_gradient(capture: Capture, score: Tensor) -> Tensor:
    """d score / d input (N, 3, H, W) on the capture's own graph (kept for more)."""
    if capture.inputs is None:
        raise ValueError("this pass did not record autograd from its input")
    if not score.requires_grad:
        return torch.zeros_like(capture.inputs)
    (found,) = torch.autograd.grad(score, capture.inputs, retain_graph=True, allow_unused=True)
    return torch.zeros_like(capture.inputs) if found is None else found.detach()


def backward(
    capture: Capture, scores: Tensor, layers: Collection[str] | None = None, retain: bool = True
) -> dict[str, Tensor]:
    """Gradients of the scalar ``scores`` with respect to the kept maps, in one pass.

    Only the gradients with respect to the maps are computed (no parameter gradients).
    With ``retain`` the graph is kept so that another target can be explained later.
    A map that does not influence the score gets a zero gradient.
    """
    wanted = None if layers is None else set(layers)
    names = [n for n in capture.activations if wanted is None or n in wanted]
    unique = {id(capture.activations[n]): capture.activations[n] for n in names}
    if not scores.requires_grad:  # a target that does not depend on the maps (a constant)
        grads = [None] * len(unique)
    else:
        grads = torch.autograd.grad(
            scores, list(unique.values()), retain_graph=retain, allow_unused=True
        )
    by_id = {
        key: (torch.zeros_like(a) if g is None else g).detach()
        for (key, a), g in zip(unique.items(), grads, strict=True)
    }
    return {name: by_id[id(capture.activations[name])] for name in names}


def hessian_product(capture: Capture, score: Tensor, layer: str) -> Tensor:
    """(d²score / dA²) A for the kept map A of ``layer``: the gradient of score with
    respect to A, kept on the graph, then its product with A; zero where the score
    does not depend on A twice (a network of ReLUs and linear layers)."""
    activations = capture.activations[layer]
    if not score.requires_grad:
        return torch.zeros_like(activations)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(
            score, activations, retain_graph=True, create_graph=True, allow_unused=True
        )
        if gradient is None or not gradient.requires_grad:
            return torch.zeros_like(activations)
        (product,) = torch.autograd.grad(
            gradient, activations, grad_outputs=activations.detach(), retain_graph=True,
            allow_unused=True,
        )  # fmt: skip
    return torch.zeros_like(activations) if product is None else product.detach()
