"""A class on one server: students arrive at ``camwidget app`` together, each in a
headless Chromium page of their own, and use their panels while all are connected.

    python benchmarks/classroom.py --students 30 [--arrival 10] [--server solara|voila]

Measured (p50 and p95 over the students): the time from a student's arrival to their
first overlay; a class change (a click on the second class) to the new map on their
page; a colormap change to the new colours on their page; all while every student is
connected, each acting at random moments. Also: the memory of the server (the USS of
its process and every child), with everyone connected and after everyone has left and
the idle time-out has passed; the pages that never got a panel; error lines in the
server's log. The browser runs on the same machine and competes with the server for its
cores, as it did when the issue's table was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MAP = ".camwidget-overlay img.camwidget-map[src]"
VIEWPORT = {"width": 1300, "height": 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument(
        "--arrival", type=float, default=10.0, help="seconds over which they arrive"
    )
    parser.add_argument("--server", choices=("solara", "voila"), default="solara")
    parser.add_argument("--changes", type=int, default=3, help="class and colormap changes each")
    parser.add_argument("--idle", type=float, default=0.5, help="the app's --idle, minutes")
    parser.add_argument(
        "--slow", type=int, default=0, help="students who start Score-CAM while the others act"
    )
    parser.add_argument(
        "--one-browser",
        action="store_true",
        help="every student a tab of one browser (its scripts compiled once), not a browser each",
    )
    parser.add_argument(
        "--no-nice",
        dest="nice",
        action="store_false",
        help="the browsers at the server's priority (by default at nice 19)",
    )
    args = parser.parse_args()
    port = _free_port()
    log = Path(tempfile.mkdtemp()) / "app.log"
    command = [sys.executable, "-m", "camwidget.cli", "app", "--server", args.server]
    command += ["--port", str(port), "--no-browser", "--idle", str(args.idle)]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(f"http://127.0.0.1:{port}/", server, log)
        found = asyncio.run(_class(f"http://127.0.0.1:{port}/", args, server))
        _report(args, found, log)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


async def _class(url: str, args: argparse.Namespace, server: subprocess.Popen) -> dict:
    from playwright.async_api import async_playwright

    found: dict[str, list] = {"first": [], "class": [], "colormap": [], "missing": [], "slow": []}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        keep_nice = asyncio.create_task(_nice(server.pid)) if args.nice else None
        gap = args.arrival / max(1, args.students - 1)
        shared = await browser.new_context(viewport=VIEWPORT) if args.one_browser else None
        students = [_student(browser, shared, url, i * gap, found) for i in range(args.students)]
        before = _cpu(server), _cpu(psutil.Process(), exclude=server.pid)
        pages = [page for page in await asyncio.gather(*students) if page is not None]
        after = _cpu(server), _cpu(psutil.Process(), exclude=server.pid)
        found["cpu"] = [now - then for now, then in zip(after, before, strict=True)]
        found["memory_connected"] = _uss(server)
        found["threads_connected"] = psutil.Process(server.pid).num_threads()
        rng = random.Random(0)
        for page in pages[: args.slow]:  # these start Score-CAM, the others go on
            method = page.locator(".camwidget-method select")
            value = await method.evaluate(_OPTION, "Score-CAM · slow")
            await method.select_option(value=value)
        others = pages[args.slow :]
        await asyncio.gather(*(_use(page, args.changes, rng.random(), found) for page in others))
        for page in pages[: args.slow]:
            status = await page.locator(".camwidget-status").inner_text()
            found["slow"].append(status.split(" · ")[0][:60])
        found["memory_used"] = _uss(server)
        for page in pages:
            await (page.close() if args.one_browser else page.context.close())
        await browser.close()
        if keep_nice is not None:
            keep_nice.cancel()
    await asyncio.sleep(args.idle * 60 + 15)  # the idle time-out, and a little
    found["memory_left"] = _uss(server)
    found["threads_left"] = psutil.Process(server.pid).num_threads()
    return found


async def _nice(server: int) -> None:
    """Every second, the browser's processes (this one's children but the server) at
    nice 19: they take what the server leaves, as on the students' own machines."""
    while True:
        for member in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if server not in {member.pid, *(p.pid for p in member.parents())}:
                    member.nice(19)
        await asyncio.sleep(1.0)


async def _student(browser, shared, url: str, arrival: float, found: dict):
    """A student's page: in a context of its own on ``browser``, or in ``shared``."""
    await asyncio.sleep(arrival)
    context = shared or await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    start = time.perf_counter()
    try:
        await page.goto(url, timeout=120_000)
        await page.wait_for_selector(MAP, timeout=180_000)
        await page.wait_for_function(_STATUS_HAS, arg="Grad-CAM", timeout=180_000)
    except Exception as error:
        found["missing"].append(f"{type(error).__name__}: {str(error)[:120]}")
        await (page.close() if shared else context.close())
        return None
    found["first"].append(time.perf_counter() - start)
    return page


_OPTION = """(s, t) => [...s.options].find(o => o.text.replace(/\u00a0/g, ' ') === t).value"""
_STATUS_HAS = """(text) => { const s = document.querySelector('.camwidget-status');
    return s && s.innerText.includes(text); }"""
_MAP_SRC = "() => document.querySelector('.camwidget-overlay img.camwidget-map').src"
_FILTER = (
    "() => getComputedStyle(document.querySelector('.camwidget-overlay img.camwidget-map')).filter"
)


async def _use(page, changes: int, seed: float, found: dict) -> None:
    """``changes`` class changes and colormap changes, at random moments."""
    rng = random.Random(seed)
    radios = page.locator(".camwidget-classes .widget-radio-box label")
    colormap = page.locator(".camwidget-colormap select")
    maps = ["magma", "cividis", "viridis", "turbo"]
    for change in range(changes):
        await asyncio.sleep(rng.uniform(0.5, 4.0))
        before = await page.evaluate(_MAP_SRC)
        start = time.perf_counter()
        await radios.nth(1 + change % 2).click()
        await page.wait_for_function(f"() => ({_MAP_SRC})() !== {before!r}", timeout=120_000)
        found["class"].append(time.perf_counter() - start)
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        before = await page.evaluate(_FILTER)
        start = time.perf_counter()
        await colormap.select_option(value=maps[change % len(maps)])
        await page.wait_for_function(f"() => ({_FILTER})() !== {before!r}", timeout=60_000)
        found["colormap"].append(time.perf_counter() - start)


def _cpu(root: psutil.Process | subprocess.Popen, exclude: int | None = None) -> float:
    """CPU seconds spent so far by ``root`` and its children (but ``exclude``'s tree)."""
    top = root if isinstance(root, psutil.Process) else psutil.Process(root.pid)
    total = 0.0
    for member in [top, *top.children(recursive=True)]:
        try:
            if exclude is not None and exclude in {member.pid, *(p.pid for p in member.parents())}:
                continue
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _uss(server: subprocess.Popen) -> float:
    """MB of memory the server and its children hold alone (USS)."""
    family = [psutil.Process(server.pid)]
    family += family[0].children(recursive=True)
    total = 0
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_full_info().uss
    return total / 2**20


def _report(args: argparse.Namespace, found: dict, log: Path) -> None:
    def p(values: list[float], q: float) -> str:
        if not values:
            return "–"
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]:.2f}"

    errors = [line for line in log.read_text().splitlines() if re.search(r"Traceback|ERROR", line)]
    print(f"\n{args.students} students on `camwidget app --server {args.server}`, arriving "
          f"over {args.arrival:.0f} s, {os.cpu_count()} cores")  # fmt: skip
    print("| measure | p50 | p95 |\n|---|---|---|")
    print(f"| first overlay (s) | {p(found['first'], 0.5)} | {p(found['first'], 0.95)} |")
    print(f"| class change (s) | {p(found['class'], 0.5)} | {p(found['class'], 0.95)} |")
    print(f"| colormap change (s) | {p(found['colormap'], 0.5)} | {p(found['colormap'], 0.95)} |")
    print(f"\nserver memory (USS of every process): {found['memory_connected']:.0f} MB with all "
          f"connected, {found['memory_used']:.0f} MB after their changes, "
          f"{found['memory_left']:.0f} MB after all left and the idle time-out")  # fmt: skip
    print(f"panels: {len(found['first'])} of {args.students}; missing: {found['missing'][:3]}")
    print(f"the server's threads (a worker per panel): {found['threads_connected']} with all "
          f"connected, {found['threads_left']} after all left")  # fmt: skip
    server, browser = found["cpu"]
    print(f"CPU seconds while they arrived: server {server:.1f}, browser and driver {browser:.1f}")
    print(f"the server's log: {log}")
    print(f"error lines in the server's log: {len(errors)} {errors[:3]}")
    print(f"changes measured: {len(found['class'])} class, {len(found['colormap'])} colormap")
    if args.slow:
        print(f"the {args.slow} students on Score-CAM, their status at the end: {found['slow']}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, log: Path) -> None:
    for _ in range(240):
        if server.poll() is not None:
            sys.exit(f"the app exited: {log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the app did not answer: {log.read_text()}")


if __name__ == "__main__":
    main()
