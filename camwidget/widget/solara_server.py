"""The classroom app's server: Solara's ASGI app (its documented way to self-host) run by
uvicorn in this process, serving :mod:`camwidget.widget.solara_page` to every student.

    python -m camwidget.widget.solara_server --host 0.0.0.0 --port 8866 [--open]

Each student's browser downloads the page's scripts (some megabytes) once; Solara
compresses every response as it goes, at gzip's slowest level, which took a third of the
server's time while a class arrived. Here it compresses at level 1: a few per cent
larger, several times faster.
"""

from __future__ import annotations

import argparse
import os
import threading
import webbrowser

APP = "camwidget.widget.solara_page"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--open", action="store_true", help="open a browser on the page")
    args = parser.parse_args(argv)
    os.environ.update(SOLARA_APP=APP, SERVER_NAME=args.host, SERVER_PORT=str(args.port))
    from solara.server import settings

    settings.main.mode = "production"
    import uvicorn
    from solara.server.starlette import app
    from starlette.middleware.gzip import GZipMiddleware

    for middleware in app.user_middleware:
        if middleware.cls is GZipMiddleware:
            middleware.kwargs["compresslevel"] = 1
    if args.open:
        url = f"http://{args.host}:{args.port}/"
        threading.Timer(3.0, webbrowser.open, (url,)).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=5)  # fmt: skip


if __name__ == "__main__":
    main()
