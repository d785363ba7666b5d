"""`--compile auto|on|off`: whether a run's update runs as one compiled graph (algorithms/compiled.py),
and the directory where torch keeps compiled code so that the runs of a sweep compile once.

Compiling never changes a run's numbers beyond float rounding, so the choice is recorded in
spec.json but is not part of a run's identity. `auto` compiles a run on a CPU when it is long enough
for the speed-up to repay the compilation (docs/performance.md has the
measurements); on CUDA it does not compile until the compiled update has been measured on a GPU
(`--compile on` compiles there too).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from harness.errors import UserError

COMPILE_CHOICES = ("auto", "on", "off")
# `auto` compiles runs of at least this many updates: at the measured 1.09-1.64x on one CPU core,
# after 18-133 s of compiling (docs/performance.md), much shorter runs would not repay it.
AUTO_MIN_UPDATES = 50_000
CACHE_DIR_NAME = ".compile_cache"
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def add_compile_flag(
    parser: argparse.ArgumentParser, default: str | None = "auto", default_text: str | None = None
) -> None:
    """`--compile`; a sweep passes default None, so that its TOML spec's `compile` can apply (the demo
    too, with its own default in `default_text`)."""
    auto = f"auto, which compiles runs of {AUTO_MIN_UPDATES:,} updates or more on a CPU"
    parser.add_argument(
        "--compile",
        default=default,
        choices=COMPILE_CHOICES,
        help="run each update as one torch.compile graph: on, off or auto (default: "
        f"{default_text or auto}); never part of a run's identity",
    )


def check_choice(choice: str) -> str:
    if choice not in COMPILE_CHOICES:
        raise UserError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")
    return choice


def wants_compile(choice: str, updates: int, device: str = "auto") -> bool:
    """Whether a run of `updates` updates on `device` (as `--device` takes it) compiles under
    `--compile choice`."""
    check_choice(choice)
    if choice != "auto":
        return choice == "on"
    return updates >= AUTO_MIN_UPDATES and device_type(device) == "cpu"


def device_type(device: str) -> str:
    """cpu or cuda, as `--device` (auto, cpu, cuda, cuda:N) resolves here."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


# Settings that change which CPU code torch runs. Inductor's cache does not key its generated C++
# on ATEN_CPU_CAPABILITY: code generated vectorised and reused under `default` fails to compile
# ("'at::vec' has not been declared"; met with torch 2.13), so each setting gets its own cache.
CPU_PATH_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_path_key() -> str:
    """A directory name for the CPU code path the environment selects ('' for the default one)."""
    chosen = [f"{name}-{os.environ[name]}" for name in CPU_PATH_VARIABLES if os.environ.get(name)]
    return "_".join("".join(c if c.isalnum() or c in "-_" else "-" for c in part) for part in chosen)


def use_cache_dir(directory: Path | str) -> Path:
    """Point torch's compiled-code cache at `directory` (a sweep's runs share their sweep's; a
    subdirectory per non-default CPU code path), unless the user set TORCHINDUCTOR_CACHE_DIR;
    returns the directory in use."""
    os.environ.setdefault(CACHE_ENV, str(Path(directory) / cpu_path_key()))
    return Path(os.environ[CACHE_ENV])


def compile_record(choice: str, compiled: bool) -> dict[str, Any]:
    """spec.json's `compile` entry: the flag and what it decided."""
    return {"mode": choice, "compiled": compiled}
