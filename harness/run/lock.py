"""The per-run lock: an exclusive flock on `<run_dir>/.lock`, held by whoever trains the run (a
sweep job's child, harness/sweep/job.py, or `flowarena run`), so that a run launched twice never
has two writers. The holder writes its host and pid into the file, so that a refused process can
name it. The OS drops the lock when its process dies, however it dies: a stale lock file is never
an obstacle. Where the filesystem cannot lock (ENOLCK, e.g. NFS mounted with `nolock`), the run
goes on unlocked after a warning line (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from harness.errors import StorageError, UnwritableError, UserError, is_storage_fault

LOCK_NAME = ".lock"
LOCK_WAIT_S = 10.0  # how long a second process waits for the holder to finish before leaving
LOCK_POLL_S = 0.5


@contextlib.contextmanager
def run_lock(run_dir: Path, wait_s: float | None = None) -> Iterator[bool]:
    """Yields True while this process holds the run's lock, False when another process held it
    for `wait_s` (default LOCK_WAIT_S). Raises UnwritableError when the filesystem refuses the
    lock file (read-only, full, permissions)."""
    deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
    with _open_lock_file(run_dir) as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(LOCK_POLL_S)
            except OSError as error:
                if error.errno != errno.ENOLCK:
                    raise
                print(
                    f"warning: the filesystem of {run_dir} cannot lock files (ENOLCK); training it "
                    f"unlocked: do not start this run twice (docs/reliability.md)",
                    flush=True,
                )
                yield True
                return
        try:
            _write_holder(handle)
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_lock_file(run_dir: Path) -> IO[str]:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return (run_dir / LOCK_NAME).open("a+")
    except OSError as error:
        if not is_storage_fault(error):
            raise
        raise UnwritableError(f"{StorageError(run_dir / LOCK_NAME, error)}; nothing was written") from None


def _write_holder(handle: IO[str]) -> None:
    """Name this process in the lock file; a full disk only costs the name."""
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        handle.flush()


def lock_holder(run_dir: Path) -> str:
    """Who holds (or last held) the run's lock, as its lock file says."""
    try:
        text = (run_dir / LOCK_NAME).read_text().strip()
    except OSError:
        text = ""
    return text or "a process that has not named itself yet"


@contextlib.contextmanager
def hold_run_locks(run_dirs: Sequence[Path], wait_s: float | None = None) -> Iterator[None]:
    """Every run's lock, or UserError (exit code 2) naming the holder, nothing else written. A run
    directory made here for the lock alone (the run stopped on bad input) is removed again."""
    made = {run_dir: _first_missing(run_dir) for run_dir in run_dirs if not run_dir.exists()}
    try:
        with _locks(run_dirs, wait_s):
            yield
    finally:
        for run_dir, top in made.items():
            _remove_if_lock_only(run_dir, top)


def _first_missing(path: Path) -> Path:
    """The highest directory of `path` that does not exist yet."""
    while not path.parent.exists():
        path = path.parent
    return path


def _remove_if_lock_only(run_dir: Path, top: Path) -> None:
    """Remove a run directory that holds only its lock file, and its parents up to `top` that are
    left empty (created for the lock alone)."""
    with contextlib.suppress(OSError):
        if [p.name for p in run_dir.iterdir()] != [LOCK_NAME]:
            return
        (run_dir / LOCK_NAME).unlink()
        for directory in [run_dir, *run_dir.parents]:
            directory.rmdir()  # OSError once a directory is not empty: the others stay
            if directory == top:
                return


@contextlib.contextmanager
def _locks(run_dirs: Sequence[Path], wait_s: float | None) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for run_dir in run_dirs:
            if not stack.enter_context(run_lock(run_dir, wait_s)):
                raise UserError(
                    f"{run_dir} is being trained by another process ({lock_holder(run_dir)}); waited "
                    f"{LOCK_WAIT_S if wait_s is None else wait_s:g} s and left it alone. Run the same "
                    f"command again once that process has ended: it resumes or skips the run"
                )
        yield
