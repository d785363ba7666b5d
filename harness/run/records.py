"""The run directory and its files (docs/records.md).

    <out>/<sweep>/<variant>/<task>/seed<k>/
      spec.json  status.json  evals.parquet  train.parquet  ckpt.pt

Every write goes to a temporary file in the same directory and is renamed over the target,
so a crash never leaves a half-written file; a write the filesystem refuses (full disk or quota,
read-only mount, permissions) raises `StorageError` naming the target and the cause, and leaves
the target as it was. `check_writable` finds such a directory before a run starts.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import StorageError, UnwritableError, UserError, is_storage_fault

STATES = ("pending", "running", "done", "failed", "diverged")
FINAL_STATES = ("done", "diverged")
# status.json fields that hold only until the next write that does not repeat them: an error is
# cleared by a retry, the heartbeat's `activity` (harness/run/heartbeat.py) by any other write
TRANSIENT_STATUS = ("error", "metric", "traceback", "activity", "corrupt")
EVAL_COLUMNS = [
    "sweep",
    "method",
    "variant",
    "task",
    "domain",
    "seed",
    "phase",
    "step",
    "success",
    "return",
    "episode_length",
    "n_episodes",
    "eval_params",
    "wall_time_s",
    "precision",  # of the products (harness/run/precision.py); absent in records from before: fp32
]
EVAL_DTYPES = {
    "seed": "int64",
    "step": "int64",
    "n_episodes": "int64",
    "success": "float64",
    "return": "float64",
    "episode_length": "float64",
    "wall_time_s": "float64",
}
PACKAGES = ("torch", "numpy", "ogbench", "gymnasium", "mujoco", "pandas", "pyarrow", "submitit")
PACKAGES += ("minari", "gymnasium-robotics")  # D4RL's (optional: recorded where installed)


def run_dir_path(out: str | Path, sweep: str, variant: str, task: str, seed: int) -> Path:
    return Path(out) / sweep / variant / task / f"seed{seed}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary path beside `path`, then rename it over `path`. Raises
    StorageError, `path` untouched, when the filesystem refuses the write."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as error:
        if is_storage_fault(error):
            raise StorageError(path, error) from None
        raise
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as error:
        with suppress(OSError):
            os.unlink(tmp)
        if is_storage_fault(error):
            raise StorageError(path, error) from None  # type: ignore[arg-type]
        raise


PROBE_BYTES = 4096  # a page: a full disk refuses it


def check_writable(directory: Path) -> None:
    """UnwritableError (exit code 2) when `directory`, or its nearest existing ancestor when it
    does not exist yet, refuses a small file: a read-only mount, a full disk, missing permissions,
    found before any work starts. Creates nothing."""
    existing = Path(directory).absolute()
    while not existing.is_dir() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(prefix=".probe.", dir=existing) as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        if not is_storage_fault(error):
            raise
        raise UnwritableError(
            f"{StorageError(directory, error)}; nothing was written: make it writable (or free "
            f"space, or write elsewhere with --out), then run the same command again"
        ) from None


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write(
        path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is corrupt ({error}); fix or remove it") from None


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"{path} is not a readable parquet file ({reason}); restore it from a backup, or move its "
            f"run directory away and run the run again"
        ) from None


def code_version() -> str | None:
    """The git commit of the checkout this code runs from, with '+dirty' for local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        with suppress(PackageNotFoundError):
            versions[name] = version(name)
    return versions


class RunDir:
    """One run's directory: spec, status, evals, training metrics and checkpoint."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.spec_path = self.path / "spec.json"
        self.status_path = self.path / "status.json"
        self.evals_path = self.path / "evals.parquet"
        self.train_path = self.path / "train.parquet"
        self.ckpt_path = self.path / "ckpt.pt"
        # harness/run/trackers.py's Trackers (attached by harness/run/train.py): sent every row
        # written here, and told where the rows continue after a resume
        self.trackers: Any = None

    def exists(self) -> bool:
        return self.spec_path.exists()

    def read_spec(self) -> dict[str, Any]:
        return read_json(self.spec_path)

    def write_spec(self, spec: Mapping[str, Any]) -> None:
        write_json(self.spec_path, spec)

    def read_status(self) -> dict[str, Any]:
        if not self.status_path.exists():
            return {"state": "pending", "step": 0}
        return read_json(self.status_path)

    def write_status(self, state: str, **fields: Any) -> dict[str, Any]:
        assert state in STATES, state
        status = {k: v for k, v in self.read_status().items() if k not in TRANSIENT_STATUS}
        now = time.time()
        status.update(state=state, updated_at=now, host=socket.gethostname(), pid=os.getpid(), **fields)
        status.setdefault("created_at", now)
        write_json(self.status_path, status)
        return status

    def read_rows(self, kind: str) -> pd.DataFrame:
        path = self.evals_path if kind == "evals" else self.train_path
        return read_parquet(path) if path.exists() else pd.DataFrame()

    def append_rows(self, kind: str, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        path = self.evals_path if kind == "evals" else self.train_path
        new = pd.DataFrame(rows)
        if kind == "evals":
            new = new.reindex(columns=EVAL_COLUMNS).astype(EVAL_DTYPES)
        old = self.read_rows(kind)
        frame = new if old.empty else pd.concat([old, new], ignore_index=True)
        write_parquet(path, frame)
        if self.trackers is not None:
            self.trackers.log_rows(kind, rows)

    def truncate_rows(self, after_step: int, kind: str) -> int:
        """Drop rows with step > after_step (left by a run killed after its last checkpoint).
        Returns how many rows were dropped."""
        if self.trackers is not None:
            self.trackers.rewind(after_step)
        frame = self.read_rows(kind)
        if frame.empty:
            return 0
        drop = frame["step"] > after_step
        if drop.any():
            path = self.evals_path if kind == "evals" else self.train_path
            write_parquet(path, frame[~drop].reset_index(drop=True))
        return int(drop.sum())
