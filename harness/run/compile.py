"""`--compile auto|on|off`: whether a run's update runs as one compiled graph (algorithms/compiled.py),
and the directory where torch keeps compiled code so that the runs of a sweep compile once.

Compiling never changes a run's numbers beyond float rounding, so the choice is recorded in
spec.json but is not part of a run's identity. `auto` compiles a run long enough for the speed-up
to repay the compilation (about one to three minutes per method on 2 CPU cores, seconds once the
cache holds it; the README's performance section has the measurements).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from harness.errors import UserError

COMPILE_CHOICES = ("auto", "on", "off")
# `auto` compiles runs of at least this many updates: at the measured 1.1-1.5x on 2 CPU cores
# (README, Performance), shorter runs would spend as long compiling as they save.
AUTO_MIN_UPDATES = 50_000
CACHE_DIR_NAME = ".compile_cache"
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def add_compile_flag(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """`--compile`; a sweep passes default None, so that its TOML spec's `compile` can apply."""
    parser.add_argument(
        "--compile",
        default=default,
        choices=COMPILE_CHOICES,
        help="run each update as one torch.compile graph: on, off, or auto (default: compile runs of "
        f"{AUTO_MIN_UPDATES:,} updates or more); never part of a run's identity",
    )


def check_choice(choice: str) -> str:
    if choice not in COMPILE_CHOICES:
        raise UserError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")
    return choice


def wants_compile(choice: str, updates: int) -> bool:
    """Whether a run of `updates` updates compiles under `--compile choice`."""
    check_choice(choice)
    return choice == "on" or (choice == "auto" and updates >= AUTO_MIN_UPDATES)


def use_cache_dir(directory: Path | str) -> Path:
    """Point torch's compiled-code cache at `directory` (a sweep's runs share their sweep's), unless
    the user set TORCHINDUCTOR_CACHE_DIR; returns the directory in use."""
    os.environ.setdefault(CACHE_ENV, str(directory))
    return Path(os.environ[CACHE_ENV])


def compile_record(choice: str, compiled: bool) -> dict[str, Any]:
    """spec.json's `compile` entry: the flag and what it decided."""
    return {"mode": choice, "compiled": compiled}
