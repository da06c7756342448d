"""The prompt box of a zero-shot model: its classes are texts the user edits."""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets

from ..errors import CamwidgetError
from ..explainer import Progress
from ..zero_shot import ZeroShot


class Prompts:
    """A zero-shot model's prompts in the panel (a part of :class:`CAMWidget`)."""

    def set_prompts(self, prompts: Sequence[str]) -> None:
        """Explain against new text ``prompts``, the classes of a zero-shot model
        (:func:`camwidget.zero_shot`): the image on show is explained again, for the
        prompt that fits it best. Prompts that cannot be used are reported and change
        nothing."""
        model = self.explainer.model
        if not isinstance(model, ZeroShot):
            raise CamwidgetError(
                "only a zero-shot model (camwidget.zero_shot) takes prompts; this panel's "
                f"model is a {type(model).__name__}"
            )

        def work(progress: Progress | None, generation: int) -> None:
            with self.explainer.runner.lock:  # no pass runs on the old prompts meanwhile
                model.set_prompts(prompts)
                self.explainer.clear()
            self.faithfulness.clear()
            self._show_prompts()
            if self._image is not None:
                self._load(self._image, None, progress, generation)

        try:
            self._run(work, "new prompts")
        except CamwidgetError as error:
            self._say_error(str(error))
            raise

    def _show_prompts(self) -> None:
        """The prompt box (shown for a zero-shot model only) and the class search hold
        the prompts in use."""
        model, box = self.explainer.model, self._controls["prompts"]
        zero_shot = isinstance(model, ZeroShot)
        box.layout.display = self._controls["use_prompts"].layout.display = (
            None if zero_shot else "none"
        )
        if zero_shot:
            box.value = "\n".join(model.prompts)
            for name in ("classes", "compare_classes"):
                self._controls[name].search.options = list(model.prompts)

    def _prompts_entered(self, button: widgets.Button) -> None:
        lines = [line.strip() for line in self._controls["prompts"].value.splitlines()]
        try:
            with self._from_page():
                self.set_prompts([line for line in lines if line])
        except CamwidgetError:
            pass  # told in the panel
