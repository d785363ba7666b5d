"""A real one-node Slurm cluster for the tests in this directory.

The session fixture `slurm_cluster` starts it with scripts/slurm/cluster.sh (idempotent) and stops it
at the end of the session only if it was not already running. Without Slurm the tests skip on a
developer machine, but fail when FLOWARENA_REQUIRE_SLURM=1 (CI sets it: Slurm tests never skip there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "scripts" / "slurm" / "cluster.sh"
START_TIMEOUT_S = 180


@dataclass(frozen=True)
class SlurmCluster:
    partition: str
    node: str


def _unavailable(reason: str) -> None:
    if os.environ.get("FLOWARENA_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason}; FLOWARENA_REQUIRE_SLURM=1 forbids skipping Slurm tests", pytrace=False)
    pytest.skip(reason)


def _can_be_root() -> bool:
    if os.geteuid() == 0:
        return True
    if shutil.which("sudo") is None:
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0


def _controller_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    return "is UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout


def _default_partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    names = out.split()
    default = [name.rstrip("*") for name in names if name.endswith("*")]
    return default[0] if default else names[0]


def _cluster(action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLUSTER_SH), action], capture_output=True, text=True, timeout=START_TIMEOUT_S)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if shutil.which("slurmctld") is None:
        _unavailable("Slurm is not installed (run .ci/slurm-setup.sh as root)")
    if not _can_be_root():
        _unavailable("the test Slurm cluster runs its daemons as root (or through passwordless sudo)")
    was_running = _controller_up()
    started = _cluster("start")
    if started.returncode != 0:
        pytest.fail(f"cluster.sh start failed:\n{started.stdout}{started.stderr}", pytrace=False)
    yield SlurmCluster(partition=_default_partition(), node=os.uname().nodename.split(".")[0])
    if not was_running:
        _cluster("stop")
