"""camwidget.memory: freed memory stays in the process for the next pass (glibc)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the setting applies to glibc's malloc only",
)

# A pass's pattern: buffers of 1 to 8 MB made, written and freed, again and again. The
# page faults per round tell whether freed memory went back to the system.
# 64 MB in 4 MB buffers, written, freed, then made again: what stays mapped in the
# process after the free, and how many pages the second pass has to map again.
PASSES = """
import os, resource, torch

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def one_pass():
    buffers = [torch.ones(2**20) for _ in range(16)]  # 16 x 4 MB
    del buffers

def kept_mb_and_faults():
    before = rss_mb()
    one_pass()
    kept = rss_mb() - before
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    one_pass()
    return kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
"""


def run(code: str, **env: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", PASSES + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**environment, **env},
        timeout=120,
        check=True,
    )
    return result.stdout.split()


def test_freed_buffers_stay_for_the_next_pass():
    applied, kept, faults = run(
        """
        from camwidget import memory
        print(memory.keep_freed_memory(), *kept_mb_and_faults())
        """
    )
    assert applied == "True"
    assert float(kept) > 60  # the 64 MB stay in the process ...
    assert int(faults) < 4096  # ... and the second pass maps few pages again (of 16,384)


def test_the_users_own_malloc_settings_win():
    small = str(128 * 1024)  # glibc's defaults, fixed: 4 MB buffers are mapped and unmapped
    applied, kept, faults = run(
        """
        from camwidget import memory
        print(memory.keep_freed_memory(), *kept_mb_and_faults())
        """,
        MALLOC_TRIM_THRESHOLD_=small,
        MALLOC_MMAP_THRESHOLD_=small,
    )
    assert applied == "False"
    assert float(kept) < 32 and int(faults) > 16000  # most of the 64 MB went back


def test_an_explainer_keeps_freed_memory_unless_told_not_to():
    code = """
        import torch, camwidget
        from camwidget import memory
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
        camwidget.Explainer(model, keep_freed_memory={keep})
        print(memory._applied)
        """
    assert run(code.format(keep=True)) == ["True"]
    assert run(code.format(keep=False)) == ["None"]
