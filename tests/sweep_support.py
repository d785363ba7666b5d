"""Helpers for the sweep tests: a test-only method that worker processes can load, tiny sweep
arguments, waits on status files, and one local reference sweep shared by the local and Slurm tests.

The method `test-sweep-probe` is plain flow behaviour cloning (tests/plugin_method.py) that
- sleeps FLOWARENA_PROBE_SLEEP_S seconds per update while SLURM_RESTART_COUNT (0 outside Slurm) is
  below FLOWARENA_PROBE_SLOW_ATTEMPTS (default 1), so that a test can interrupt a first attempt;
- raises at the 15th update of a process for seed 1 while the file FLOWARENA_PROBE_FAIL exists.
Worker processes find it through the `flowarena.algorithms` entry point of a dist-info on
PYTHONPATH (as in tests/test_cli.py); the test process registers the same class directly.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

# Imported at collection: submitit's log handlers keep the streams of its first import, which must
# not be one test's captured stdout/stderr (closed when that test ends).
import submitit  # noqa: F401

from algorithms import registry
from harness.cli import main

TESTS = Path(__file__).parent
TASK = "cube-double-play-singletask-task1-v0"
PROBE = "test-sweep-probe"
FAIL_AT_UPDATE = 15
# Every sweep test uses this budget, so that their records can be compared with each other.
BUDGET = {"offline_steps": 20, "eval_interval": 10, "eval_episodes": 1}

PROBE_SOURCE = '''

import os as _os
import time as _time


class Probe(FlowBC):
    """Flow BC that can be slowed down and made to fail (tests/sweep_support.py)."""

    name = "test-sweep-probe"

    def __init__(self, spec, config, *, device="cpu", seed=0) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        self.probe_seed = seed
        self.updates_here = 0

    def update(self, batch):
        self.updates_here += 1
        attempt = int(_os.environ.get("SLURM_RESTART_COUNT") or 0)
        if attempt < int(_os.environ.get("FLOWARENA_PROBE_SLOW_ATTEMPTS") or 1):
            _time.sleep(float(_os.environ.get("FLOWARENA_PROBE_SLEEP_S") or 0))
        marker = _os.environ.get("FLOWARENA_PROBE_FAIL")
        if self.probe_seed == 1 and marker and _os.path.exists(marker) and self.updates_here == FAIL_AT:
            raise RuntimeError("probe: seed 1 fails on purpose")
        return super().update(batch)
'''


def install_probe(site: Path) -> Path:
    """Writes the `sweepprobe` package and its dist-info (entry point) under `site`."""
    package = site / "sweepprobe"
    package.mkdir(parents=True, exist_ok=True)
    source = (TESTS / "plugin_method.py").read_text() + PROBE_SOURCE.replace("FAIL_AT", str(FAIL_AT_UPDATE))
    (package / "__init__.py").write_text(source)
    dist_info = site / "sweepprobe-0.1.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sweepprobe\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[flowarena.algorithms]\n{PROBE} = sweepprobe:Probe\n")
    return site


def activate_probe(site: Path, monkeypatch) -> None:
    """Make the probe known here (registry) and to every process started from here (PYTHONPATH)."""
    install_probe(site)
    monkeypatch.syspath_prepend(str(site))
    registry.register(importlib.import_module("sweepprobe").Probe)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))


def sweep_args(name: str, out: Path, dataset_dir: Path, *, seeds: str = "0,1", **flags: object) -> list[str]:
    args = ["sweep", "--name", name, "--suite", "smoke", "--methods", PROBE, "--tasks", TASK]
    args += ["--seeds", seeds, "--dataset-dir", str(dataset_dir), "--out", str(out), "--no-progress"]
    for key, value in {**BUDGET, "poll": 0.5, **flags}.items():
        flag = f"--{key.replace('_', '-')}"
        args += [flag] if value is True else [flag, str(value)]
    return args


def run_dir(out: Path, name: str, seed: int, variant: str = PROBE) -> Path:
    return out / name / variant / TASK / f"seed{seed}"


def status(path: Path) -> dict:
    try:
        return json.loads((path / "status.json").read_text())
    except FileNotFoundError:
        return {}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, logs: list[Path] = ()) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {p}:\n{p.read_text()[-3000:] if p.exists() else '(absent)'}" for p in logs
            )
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{tails}")
        time.sleep(0.2)


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Records without what legitimately differs between two executions: time and sweep name."""
    return frame.drop(columns=["wall_time_s", "sweep"]).reset_index(drop=True)


def records_of(path: Path, kind: str = "evals") -> pd.DataFrame:
    return comparable(pd.read_parquet(path / f"{kind}.parquet"))


def attempts(path: Path) -> list[str]:
    """The attempt headers that harness.sweep.job writes into a run's log."""
    log = path / "run.log"
    return [line for line in log.read_text().splitlines() if line.startswith("==== ")] if log.exists() else []


_REFERENCE: dict[str, dict] = {}


def local_reference(dataset_dir: Path, root: Path) -> dict:
    """The local sweep of the probe (seeds 0 and 1, two at once) in which seed 1 fails, `flowarena
    status` then, and the sweep's rerun after the cause is gone; run once per session (the local
    and the Slurm tests share it). Returns exit codes, outputs, and states and attempt headers
    after the first invocation."""
    key = str(dataset_dir)
    if key in _REFERENCE:
        return _REFERENCE[key]
    out, marker = root / "local", root / "fail-marker"
    marker.touch()
    os.environ["FLOWARENA_PROBE_FAIL"] = str(marker)
    try:
        first, first_out = _main_with_output(sweep_args("ref", out, dataset_dir, jobs=2))
        after_first = {
            seed: (status(run_dir(out, "ref", seed)), attempts(run_dir(out, "ref", seed))) for seed in (0, 1)
        }
        status_code, status_out = _main_with_output(["status", str(out / "ref")])
        marker.unlink()
        second, second_out = _main_with_output(sweep_args("ref", out, dataset_dir, jobs=2))
    finally:
        os.environ.pop("FLOWARENA_PROBE_FAIL", None)
    _REFERENCE[key] = {
        "out": out,
        "codes": (first, status_code, second),
        "outputs": (first_out, status_out, second_out),
        "after_first": after_first,
    }
    return _REFERENCE[key]


def _main_with_output(args: list[str]) -> tuple[int, str]:
    """`flowarena ARGS` in this process; returns the exit code and stdout plus stderr."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main(args)
    return code, buffer.getvalue()
