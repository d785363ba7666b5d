"""Shared fixtures: a generated OGBench-format dataset and a tiny sweep of real runs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.datagen import generate
from harness.run.compile import cpu_path_key

TASK = "cube-double-play-singletask-task1-v0"
# One compiled-code cache for every test and the runs they start (tests/test_compiled.py): a graph
# that one process compiled, the next ones load.
# A cache per CPU code path: `make test-numerics` runs under another one (harness/run/compile.py).
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    str(Path(tempfile.gettempdir()) / "flowarena-tests-compile-cache" / cpu_path_key()),
)


# Tests whose numbers depend on float rounding: learning curves, convergence, equality up to a
# tolerance. CI runs them a second time under another CPU code path (`make test-numerics`), so
# that a bound only one CPU's rounding meets fails there, not on a newcomer's machine.
NUMERICS_MODULES = {
    "test_agent_base",
    "test_bam",
    "test_cgql",
    "test_compiled",
    "test_dcgql",
    "test_dsrl",
    "test_fawac",
    "test_fbrac",
    "test_fedit",
    "test_fql",
    "test_ifql",
    "test_nets",
    "test_precision",
    "test_qam",
    "test_qam_adjoint",
    "test_qgf",
    "test_rebrac",
    "test_rlpd",
    "test_stacked",
    "test_stacked_runs",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in NUMERICS_MODULES:
            item.add_marker(pytest.mark.numerics)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in pytest-xdist workers, one per core. Tiny networks gain nothing
    # from intra-op threads, and workers side by side would oversubscribe the cores; runs the tests
    # start in subprocesses inherit the setting.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cube-double play data made with ogbench's oracles: 4 episodes of 100 transitions."""
    directory = tmp_path_factory.mktemp("ogbench-data")
    generate("cube-double-v0", 4, directory, episode_length=100, seed=0, progress=False)
    return directory


def run_args(
    dataset_dir: Path, out: Path, *, method: str = "fql", seed: int = 0, steps: int = 40, **flags
) -> list[str]:
    """`flowarena run` arguments for a tiny run on the smoke suite's tiny config."""
    args = ["run", "--method", method, "--task", TASK, "--seed", str(seed), "--suite", "smoke"]
    args += ["--dataset-dir", str(dataset_dir), "--out", str(out), "--offline-steps", str(steps)]
    flags = {"eval_interval": steps // 2, "eval_episodes": 2, "log_interval": 10, **flags}
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return [*args, "--no-progress"]


def run_suites_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """`flowarena suites ARGV` through the suites' own subcommand; its stdout (the exit code must be 0)."""
    import suites.cli

    parser = argparse.ArgumentParser()
    suites.cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["suites", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


@pytest.fixture
def flowarena(dataset_dir: Path) -> Callable[..., int]:
    """Run `flowarena run` in this process with tiny settings; returns the exit code."""

    def call(out: Path, *extra: str, **kwargs) -> int:
        return main([*run_args(dataset_dir, out, **kwargs), *extra])

    return call


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> Path:
    """A sweep directory of real runs: 2 methods x 1 task x 2 seeds, tiny config."""
    out = tmp_path_factory.mktemp("results")
    for method in ("fql", "qam"):
        for seed in (0, 1):
            code = main([*run_args(dataset_dir, out, method=method, seed=seed, steps=40), "--sweep", "tiny"])
            assert code == 0
    return out / "tiny"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from intra-op threads, and on a busy CPU their synchronisation
    costs up to 30x (QGF's act runs a backward pass per Euler step at batch 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kill_after_checkpoint(argv: list[str], status_path: Path, step: int, timeout_s: float = 120) -> dict:
    """Start `flowarena ARGV` in a subprocess, kill -9 it once status.json reports a checkpoint at
    `step` or later, and return its last status."""
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", *argv], stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if status_path.exists() and json.loads(status_path.read_text()).get("checkpoint_step", 0) >= step:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return json.loads(status_path.read_text())
