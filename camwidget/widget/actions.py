"""What the panel's buttons, uploads and method options do, and how it tells the user:
messages in words, errors included."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping

import ipywidgets as widgets

from ..errors import CamwidgetError
from ..explainer import Explanation, Progress
from .inspector import Inspector


class Actions:
    """The panel's event handlers and messages (a part of :class:`CAMWidget`)."""

    #: The largest upload the panel reads, in bytes (None: any); a larger one is refused
    #: in words (a classroom's server sets it: ``camwidget app --max-upload-mb``).
    max_upload_bytes: int | None = None

    def _reference_uploaded(self, change: Mapping) -> None:
        upload = self._upload(change, "reference")
        if upload is None:
            return
        try:
            self.set_reference(bytes(upload["content"]))
        except CamwidgetError as error:
            self._say_error(f"{upload.get('name', 'the reference')}: {error}")

    def _uploaded(self, change: Mapping) -> None:
        upload = self._upload(change, "upload")
        if upload is None:
            return
        name = upload.get("name", "the upload")

        def load(progress: Progress | None, generation: int) -> None:
            try:
                self._load(bytes(upload["content"]), None, progress, generation)
            except CamwidgetError as error:
                raise CamwidgetError(f"{name}: {error}") from None

        with self._from_page():
            self._run(load, "new image")

    def _upload(self, change: Mapping, control: str) -> Mapping | None:
        """The file uploaded with ``control``, the control emptied (so that the same file
        can come again); None where there is none, or it is over the size allowed."""
        files = change["new"]
        if not files:
            return None
        upload = files[0]
        self._controls[control].value = ()
        size, limit = len(upload["content"]), self.max_upload_bytes
        if limit is not None and size > limit:
            self._say_error(
                f"{upload.get('name', 'the upload')} is {size / 2**20:.1f} MB: this server "
                f"takes photos up to {limit / 2**20:.0f} MB; the panel keeps its photo"
            )
            return None
        return upload

    def _save_clicked(self, button: widgets.Button) -> None:
        if self._image is None:
            self._say_error("nothing to save yet: load an image first")
            return
        e = self.explanation
        name = f"camwidget-{e.label}-{e.layer}-{e.method}.png".replace(" ", "_").replace("/", "_")
        try:
            self._say(f"saved {self.save(name).resolve()}")
        except OSError as error:
            self._say_error(f"could not save: {error}")

    def _faithfulness_toggled(self, change: Mapping) -> None:
        self.faithfulness.box.layout.display = "flex" if change["new"] else "none"
        if change["new"] and self._image is not None:
            with self._from_page():
                self._update((self.main_view,))

    def _rank_clicked(self, button: widgets.Button) -> None:
        e = self.main_view.explanation
        if e is None:
            self._say_error("nothing to rank yet: load an image first")
            return

        def rank(progress: Progress | None, generation: int) -> None:
            def explain(method: str) -> Explanation:
                return self.explainer.explain(self._image, e.layer, e.target, method)

            self.faithfulness.rank(self.explainer, self._image, e, explain, progress)

        with self._from_page():
            self._run(rank, "ranking")

    def _option_chosen(self, keyword: str, change: Mapping) -> None:
        """A method's option, a setting of the explainer (part of its maps' cache key)."""
        setattr(self.explainer, keyword, change["new"])
        with self._from_page():
            self._update(self.views)

    def _classes_chosen(self, keyword: str, change: Mapping) -> None:
        """Classes typed for a method's option: names or indices, comma-separated (none:
        the method's default); a class the model lacks is told in the panel."""
        parts = [part.strip() for part in change["new"].split(",") if part.strip()]

        def choose() -> None:
            picks = [int(p) if p.isdigit() else p for p in parts]
            classes = tuple(int(self.explainer.check_target(pick)) for pick in picks)
            setattr(self.explainer, keyword, classes or None)
            with self._from_page():
                self._update(self.views)

        self._guarded(choose)

    def _guarded(self, action: Callable[[], object]) -> None:
        """Run ``action``; an error goes to the panel in words."""
        try:
            action()
        except CamwidgetError as error:
            self._say_error(str(error))
        except Exception as error:  # the panel must survive whatever the model does
            self._say_error(f"unexpected error: {type(error).__name__}: {error}")

    def _inspect_toggled(self, change: Mapping) -> None:
        box = self._controls["inspector"]
        if change["new"]:
            self._inspector = Inspector(self.display_size)
            box.children = [self._inspector.canvas]
            view = self.main_view
            if view.explanation is not None:
                self._inspector.show(view.rgb, view.heat, self.colormap, self.alpha)
        elif self._inspector is not None:
            box.children = []
            self._inspector.close()
            self._inspector = None

    # ----------------------------------------------------------------- messages

    def _require(self) -> Explanation:
        explanation = self.explanation
        if explanation is None:
            raise CamwidgetError("no image yet: call set_image(...) or upload one")
        return explanation

    def _say(self, text: str, error: bool = False) -> None:
        color = "#b00020" if error else "#555"
        self._controls["messages"].value = (
            f"<span style='color:{color}'>{html.escape(text, quote=False)}</span>" if text else ""
        )

    def _say_error(self, text: str) -> None:
        self._say(text, error=True)
