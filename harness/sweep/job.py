"""A sweep job's process and its runs' child processes (submitted by harness/sweep/launch.py).

A job holds a pack of runs (one locally; `--runs-per-gpu K` per GPU on Slurm). Its process,
`PackJob`, starts one child process per run, `python -m harness.sweep.job RUN_JSON`, which
calls `harness.run.train.run` with stdout and stderr appended to `<run_dir>/run.log`, and waits for them. The
runs of a pack train in parallel and each resumes on its own.

Stopping. A child turns SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 into `train.request_stop()`: the
training loop checkpoints at the next step boundary, marks the run pending ("preempted at step N")
and returns "preempted", so nothing past the checkpoint is written. Slurm signals every process of
the job:
- time limit or preemption warning (USR2, SIGNAL_DELAY_S before the end): submitit calls
  `PackJob.checkpoint` in the job process; it also signals the children, waits up to STOP_WAIT_S for
  them to save, and returns a DelayedSubmission of the same pack, which submitit requeues. Training
  never runs in the job process, so the signal handler may block while the runs save.
- `scontrol requeue`, preemption by requeue, `scancel`: SIGTERM; the children save and exit before
  Slurm's SIGKILL when they can. Killed harder, a run loses what followed its last checkpoint: its
  next attempt drops rows past the checkpoint and recomputes them (harness/run/checkpoint.py),
  so no row is lost or duplicated.
A requeued pack skips its runs that are done or diverged and resumes the others.

Safety. A child holds the run's lock (harness/run/lock.py, as `flowarena run` does) while it
trains, so a run submitted twice (a sweep rerun while its old jobs still run) never has two
writers; the second one waits LOCK_WAIT_S and then leaves the run alone. A child touches
`<run_dir>/.heartbeat` every HEARTBEAT_S, so `flowarena status` can tell a silent run from a live
one on another host. A write the filesystem refuses ends the child with one message (exit code 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from harness.args import quiet_library_warnings
from harness.errors import StorageError, UserError
from harness.run import records
from harness.run.lock import lock_holder, run_lock
from harness.sweep.files import HEARTBEAT_NAME, LOG_NAME

HEARTBEAT_S = 30.0
STOP_WAIT_S = 90.0  # how long checkpoint() waits for the runs to save
CHILD_POLL_S = 0.5
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
EXIT_DONE, EXIT_FAILED, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_LOCKED, EXIT_PREEMPTED = 0, 1, 2, 3, 73, 75
OUTCOMES = {
    EXIT_DONE: "done",
    EXIT_FAILED: "failed",
    EXIT_USER_ERROR: "failed",
    EXIT_DIVERGED: "diverged",
    EXIT_LOCKED: "locked",
    EXIT_PREEMPTED: "preempted",
}


def run_payload(run: Any) -> dict[str, Any]:
    """What a job needs of a PlannedRun (plain JSON: the job process never imports torch)."""
    return {"run_dir": str(run.run_dir), "label": run.label, "spec": dataclasses.asdict(run.spec)}


def unit_payload(runs: list[Any]) -> dict[str, Any]:
    """What a job needs of the runs one process trains: one run, or seeds of one (variant, task)
    stacked (harness.run.train.run_group). The first run's directory holds the process's log."""
    label = runs[0].label
    if len(runs) > 1:
        label = f"{runs[0].variant} {runs[0].task} seeds {','.join(str(run.seed) for run in runs)}"
    return {"run_dir": str(runs[0].run_dir), "label": label, "runs": [run_payload(run) for run in runs]}


def read_state(run_dir: str | Path) -> str:
    path = Path(run_dir) / "status.json"
    try:
        return json.loads(path.read_text()).get("state", "pending")
    except (FileNotFoundError, json.JSONDecodeError):
        return "pending"


class PackJob(submitit.helpers.Checkpointable):
    """One job: its units (unit_payload: one run, or stacked seeds) in parallel child processes.
    `threads`: torch threads per child; `runs_per_gpu`: child i uses the job's GPU i // runs_per_gpu."""

    def __init__(self, threads: int | None = None, runs_per_gpu: int = 1) -> None:
        self.threads = threads
        self.runs_per_gpu = runs_per_gpu
        self._children: dict[str, subprocess.Popen] = {}

    def __call__(self, units: list[dict[str, Any]]) -> dict[str, str]:
        outcomes: dict[str, str] = {}
        try:
            for index, unit in enumerate(units):
                states = {run["run_dir"]: read_state(run["run_dir"]) for run in unit["runs"]}
                if all(state in records.FINAL_STATES for state in states.values()):
                    outcomes.update(states)
                else:
                    self._children[unit["run_dir"]] = self._start(unit, index)
            while any(child.poll() is None for child in self._children.values()):
                time.sleep(CHILD_POLL_S)
        finally:
            self.stop_children(wait_s=0)  # only does something when leaving on an exception
        for unit in units:
            child = self._children.get(unit["run_dir"])
            if child is not None:
                outcome = OUTCOMES.get(child.returncode, f"exit code {child.returncode}")
                outcomes.update({run["run_dir"]: outcome for run in unit["runs"]})
        return outcomes

    def checkpoint(self, units: list[dict[str, Any]]) -> submitit.helpers.DelayedSubmission:
        """Preemption or time limit (in submitit's USR2 handler): let the runs save, then requeue."""
        self.stop_children(wait_s=STOP_WAIT_S)
        return submitit.helpers.DelayedSubmission(PackJob(self.threads, self.runs_per_gpu), units)

    def stop_children(self, *, wait_s: float) -> None:
        alive = [child for child in self._children.values() if child.poll() is None]
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + wait_s
        while any(child.poll() is None for child in alive) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _start(self, unit: dict[str, Any], index: int) -> subprocess.Popen:
        run_dir = Path(unit["run_dir"])
        for run in unit["runs"][1:]:  # stacked seeds: the first seed's run.log holds the output
            other = Path(run["run_dir"])
            other.mkdir(parents=True, exist_ok=True)
            with (other / LOG_NAME).open("a") as log:
                log.write(
                    _attempt_header(run["label"]) + f"trained stacked with {unit['label']}; "
                    f"output in {run_dir / LOG_NAME}\n"
                )
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        env.update(self._gpu_env(index))
        payload = json.dumps({**unit, "threads": self.threads})
        with (run_dir / LOG_NAME).open("a") as log:
            log.write(_attempt_header(unit["label"]))
            log.flush()
            return subprocess.Popen(
                [sys.executable, "-m", "harness.sweep.job", payload],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def _gpu_env(self, index: int) -> dict[str, str]:
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        if len(visible) <= 1:
            return {}
        return {"CUDA_VISIBLE_DEVICES": visible[(index // self.runs_per_gpu) % len(visible)]}


def _attempt_header(label: str) -> str:
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "?")
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')} (job {job})"
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"\n==== {when} {label}: host {socket.gethostname()}, job {job}, restart {restart} ====\n"


def child_main(payload_json: str) -> int:
    """Train one unit: a run, or stacked seeds (called as `python -m harness.sweep.job UNIT_JSON`);
    the exit code names the outcome."""
    payload = json.loads(payload_json)
    stop_early = threading.Event()
    for sig in STOP_SIGNALS:  # until training can be asked to stop, remember the request
        signal.signal(sig, lambda *_: stop_early.set())
    from harness.run import train

    quiet_library_warnings()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: train.request_stop())
    run_dirs = [Path(run["run_dir"]) for run in payload["runs"]]
    try:
        return _locked_train(train, payload, run_dirs, stop_early)
    except UserError as error:  # the lock file refused (harness/run/lock.py)
        print(f"flowarena: error: {error}", flush=True)
        return EXIT_USER_ERROR


def _locked_train(
    train: Any, payload: dict[str, Any], run_dirs: list[Path], stop_early: threading.Event
) -> int:
    with contextlib.ExitStack() as stack:
        for run_dir in run_dirs:  # every seed's lock, or none of the unit is trained here
            if not stack.enter_context(run_lock(run_dir)):
                print(
                    f"another process holds {run_dir}'s lock ({lock_holder(run_dir)}); leaving it", flush=True
                )
                return EXIT_LOCKED
        if stop_early.is_set():
            print("stopped before training started", flush=True)
            return EXIT_PREEMPTED
        for run_dir in run_dirs:
            stack.enter_context(heartbeat(run_dir))
        return _train(train, payload)


def _train(train: Any, payload: dict[str, Any]) -> int:
    if payload.get("threads"):
        import torch

        torch.set_num_threads(payload["threads"])
    from harness.run.spec import Budget, RunSpec

    specs = []
    for run in payload["runs"]:
        fields = dict(run["spec"])
        specs.append(RunSpec(**{**fields, "budget": Budget(**fields["budget"])}))
    run_dirs = [records.RunDir(run["run_dir"]) for run in payload["runs"]]
    try:
        if len(specs) == 1:
            state = train.run(specs[0], progress=True)
        else:
            state = unit_state(list(train.run_group(specs, progress=True).values()))
    except UserError as error:
        for run_dir in run_dirs:
            _mark_failed(run_dir, error)
        print(f"flowarena: error: {error}", flush=True)
        return EXIT_USER_ERROR
    except StorageError as error:
        for run_dir in run_dirs:
            _mark_failed(run_dir, error)
        print(f"flowarena: error: {error}; fix the cause and rerun the sweep to resume", flush=True)
        return EXIT_FAILED
    except Exception as error:
        for run_dir in run_dirs:
            _mark_failed(run_dir, error)
        traceback.print_exc()
        return EXIT_FAILED
    codes = {"done": EXIT_DONE, "diverged": EXIT_DIVERGED, "preempted": EXIT_PREEMPTED}
    if state not in codes:
        print(f"train.run returned an unknown state {state!r}", flush=True)
    return codes.get(state, EXIT_FAILED)


def unit_state(states: list[str]) -> str:
    """One state for stacked seeds: preempted if any was, done if all are, else diverged."""
    if "preempted" in states:
        return "preempted"
    return "done" if all(state == "done" for state in states) else "diverged"


def _mark_failed(run_dir: records.RunDir, error: BaseException) -> None:
    """train.run records failures inside training; this covers errors before it (e.g. a missing
    dataset), so that `flowarena status` shows them. A finished run's status is never touched."""
    from harness.run.train import failed_status, write_failed_status

    status = run_dir.read_status()
    if status.get("state") in (*records.FINAL_STATES, "failed"):
        return
    write_failed_status(run_dir, **failed_status(error))


@contextlib.contextmanager
def heartbeat(run_dir: Path):
    """Touch `<run_dir>/.heartbeat` every HEARTBEAT_S while the block runs."""
    done = threading.Event()
    path = run_dir / HEARTBEAT_NAME

    def beat() -> None:
        while True:
            with contextlib.suppress(OSError):
                path.touch()
            if done.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))
