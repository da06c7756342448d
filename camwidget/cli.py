"""The ``camwidget`` command: render an explanation to a PNG, open the demo notebook, or
serve the panel as a code-free app."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from . import methods, samples, sources, zoo
from .errors import CamwidgetError
from .worker import SERVER_SLOTS

DEFAULT_SAMPLE = "grace_hopper"
#: The notebooks that ship inside the package: the quickstart and the app.
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except CamwidgetError as error:
        print(f"camwidget: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camwidget",
        description="See what a CNN looks at: class activation maps (CAM, Grad-CAM) "
        "as heatmaps over the image.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _render_parser(commands)
    demo = commands.add_parser(
        "demo",
        help="open JupyterLab on the quickstart notebook",
        description="Copy the quickstart notebook (it ships with the package) into a folder "
        "and open it in JupyterLab: a live panel on the embedded pretrained model.",
    )
    demo.add_argument("--port", type=int, help="port for JupyterLab")
    demo.add_argument(
        "--dir", default="camwidget-demo", help="folder for the notebook (default: camwidget-demo)"
    )
    demo.set_defaults(run=_demo)
    _app_parser(commands)
    return parser


def _app_parser(commands: argparse._SubParsersAction) -> None:

    app = commands.add_parser(
        "app",
        help="serve the panel as a code-free page, e.g. for a class",
        description="Serve the panel alone on a page: upload a photo, change the layer, the "
        "class, the method and the colours; no code. With Solara (the default) one process "
        "serves every student, each with a panel of their own, over one copy of the model; "
        "with Voila each student gets a kernel. Needs camwidget[app].",
    )
    app.add_argument(
        "--model",
        default="efficientnet_lite0",
        metavar="SPEC",
        help=f"the model: {sources.FORMS} (default: efficientnet_lite0)",
    )
    app.add_argument(
        "--random-weights",
        action="store_true",
        help="torchvision's and timm's models untrained (nothing downloads)",
    )
    app.add_argument("--sample", default="chelsea", help="the first photo (a sample name)")
    app.add_argument("--images", metavar="DIR", help="a folder of photos to offer in a list")
    app.add_argument(
        "--labels", metavar="FILE", help="class names, one a line (for a model without them)"
    )
    app.add_argument("--port", type=int, default=8866, help="port (default: 8866)")
    app.add_argument(
        "--ip", default="127.0.0.1", help="address to serve on; 0.0.0.0 for a classroom network"
    )
    app.add_argument("--server", choices=("solara", "voila"), default="solara")
    app.add_argument(
        "--idle",
        type=float,
        default=10.0,
        metavar="MINUTES",
        help="a student's panel is closed this long after their page (Solara; default: 10)",
    )
    app.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (20)")
    app.add_argument(
        "--slow-jobs",
        type=int,
        default=SERVER_SLOTS,
        help="perturbation methods and metrics running at once; 0: no cap (default: one "
        f"per two cores, here {SERVER_SLOTS})",
    )
    app.add_argument("--no-browser", action="store_true", help="do not open a browser")
    app.set_defaults(run=_app)


def _render_parser(commands: argparse._SubParsersAction) -> None:
    render = commands.add_parser(
        "render",
        help="explain one image and write the overlay as a PNG",
        description="Explain one image with the embedded pretrained model and write the "
        "heatmap overlay, with its colour legend and a caption, as a PNG.",
        epilog=f"Samples that ship with the installed packages: {', '.join(samples.names())}.",
    )
    render.add_argument(
        "image",
        nargs="?",
        default=DEFAULT_SAMPLE,
        metavar="IMAGE|SAMPLE",
        help=f"an image file or a sample name (default: {DEFAULT_SAMPLE})",
    )
    render.add_argument(
        "--model", default="efficientnet_lite0", choices=zoo.names(), help="pretrained model"
    )
    render.add_argument("--layer", help="layer to explain (default: the last spatial layer)")
    render.add_argument(
        "--target",
        metavar="T|LABEL",
        help="class index or name, any case, or an unambiguous prefix (default: top-1)",
    )
    render.add_argument("--method", default="gradcam", choices=list(methods.REGISTRY))
    render.add_argument("--colormap", default="viridis", help="any matplotlib colormap name")
    render.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in [0, 1]")
    render.add_argument("--out", default="cam.png", help="output PNG path (default: cam.png)")
    render.add_argument(
        "--no-legend",
        dest="legend",
        action="store_false",
        help="leave out the colour legend under the picture (drawn by default, as in the panel)",
    )
    render.set_defaults(run=_render)


def _render(args: argparse.Namespace) -> int:
    from PIL import Image

    from . import render
    from .explainer import Explainer

    image = _image(args.image)
    model, preprocess, labels = zoo.load(args.model)
    explainer = Explainer(model, preprocess=preprocess, labels=labels)
    prepared = explainer.prepare(image)
    explanation = explainer.explain(prepared, args.layer, args.target, args.method)
    rgb = render.blend(prepared.rgb, explanation.heatmap, args.colormap, args.alpha)
    if explanation.frame is not None:
        rgb = render.veiled(rgb, ~render.inside(rgb.shape[:2], explanation.frame))
    info = explainer.layer(explanation.layer)
    lines = [
        f"{explanation.label} · p = {explanation.probability:.2f} · class {explanation.target}",
        f"{explanation.title} at {info.label} · {args.model}",
    ]
    lines += [note for note in (explanation.message, *prepared.notes) if note]
    out = Path(args.out)
    if out.parent != Path() and not out.parent.is_dir():
        raise CamwidgetError(f"cannot write {out}: the folder {out.parent} does not exist")
    if args.legend:
        zero, meaning = explanation.legend()
        picture = render.with_legend(rgb, args.colormap, zero, lines, meaning)
    else:
        picture = render.captioned(rgb, lines)
    Image.fromarray(picture).save(out, format="PNG")
    print(f"{out}: {lines[0]}; {lines[1]}")
    return 0


def _image(name: str) -> object:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if name in samples.names():
        return samples.load(name)
    raise CamwidgetError(
        f"{name!r} is neither an image file nor a sample; samples: {', '.join(samples.names())}"
    )


def _demo(args: argparse.Namespace) -> int:
    _require("jupyterlab", "the demo needs JupyterLab: pip install jupyterlab")
    folder = Path(args.dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    notebook = folder / "quickstart.ipynb"
    if not notebook.exists():  # the user's copy is kept: they may have changed it
        shutil.copyfile(NOTEBOOKS / "quickstart.ipynb", notebook)
    command = [sys.executable, "-m", "jupyter", "lab", notebook.name]
    if args.port:
        command.append(f"--port={args.port}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    return _serve(command, cwd=folder)


def _app(args: argparse.Namespace) -> int:
    from .widget.classroom import Settings

    _require(args.server, f"the app needs {args.server}: pip install 'camwidget[app]'")
    sources.check(args.model)
    settings = Settings(
        model=args.model,
        pretrained=not args.random_weights,
        sample=args.sample,
        images=args.images,
        labels=args.labels,
        max_upload_mb=args.max_upload_mb,
        slow_jobs=args.slow_jobs or None,
    )
    settings.photos()  # a missing folder is told now
    settings.class_names()  # and a labels file that cannot be read
    if args.sample not in samples.names():
        raise CamwidgetError(
            f"no sample {args.sample!r}: choose one of {', '.join(samples.names())}"
        )
    env = {**os.environ, **settings.environment()}
    if args.server == "solara":
        command = [sys.executable, "-m", "camwidget.widget.solara_server"]
        command += ["--port", str(args.port), "--host", args.ip]
        command += [] if args.no_browser else ["--open"]
        env["SOLARA_KERNEL_CULL_TIMEOUT"] = f"{max(1, round(args.idle * 60))}s"
    else:
        command = [sys.executable, "-m", "voila", str(NOTEBOOKS / "app.ipynb")]
        command += [f"--port={args.port}", f"--Voila.ip={args.ip}", "--theme=light"]
        command += ["--no-browser"] if args.no_browser else []
    print(f"camwidget app: http://{args.ip}:{args.port} (Ctrl-C stops it)")
    return _serve(command, env=env)


#: The signals that stop a server: Ctrl-C, ``kill``, a closed terminal.
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _serve(command: list[str], **options: object) -> int:
    """Run the server ``command`` (``options`` go to :class:`subprocess.Popen`) in the
    foreground of this process: a stopping signal sent to this process stops the server
    too, by SIGTERM (every server's clean stop: Voila, given SIGINT, raises wherever its
    loop happens to be and was seen, under load, still running 10 s later), which ends
    its kernels; this process waits for it to end."""
    server = subprocess.Popen(command, **options)

    def forward(number: int, frame: object) -> None:
        server.send_signal(signal.SIGTERM)

    previous = {number: signal.signal(number, forward) for number in STOPPING}
    try:
        return server.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _require(module: str, message: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise CamwidgetError(message) from None


if __name__ == "__main__":
    sys.exit(main())
