"""What every benchmark prints with its figures: the machine, the commit, the command; and the place in
BENCHMARKS.md where a section goes."""

from __future__ import annotations

import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from segmote_monai.atomic import atomic_path

REPO = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    """A progress line with the time of day, flushed at once (benchmarks run for tens of minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> str:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)BENCHMARKS.md", ":(exclude)benchmarks/figures"],  # what the benchmarks write
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command() -> str:
    return "python " + shlex.join([str(Path(sys.argv[0]).resolve().relative_to(REPO))
                                   if Path(sys.argv[0]).resolve().is_relative_to(REPO) else sys.argv[0],
                                   *sys.argv[1:]])


def provenance(seed: int | None = None) -> str:
    lines = [f"- machine: {machine()}", f"- commit: {commit()}", f"- command: `{command()}`"]
    if seed is not None:
        lines.append(f"- seed: {seed}")
    return "\n".join(lines)


def write_section(path: Path, name: str, body: str) -> None:
    """Puts ``body`` between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` in ``path`` (appended the first
    time), so that each benchmark rewrites only its own section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"<!-- begin {name} -->\n{body.strip()}\n<!-- end {name} -->"
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
