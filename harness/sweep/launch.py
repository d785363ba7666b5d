"""Launching a sweep: its unfinished runs in submitit jobs, on this machine or on Slurm
(`run_sweep`), followed through the runs' status files until every job has ended. The jobs'
own processes are harness/sweep/job.py.

Local executor: submitit's LocalExecutor, which starts every job at once, so `LocalLauncher` keeps at
most `--jobs` of them running and submits the next as one ends. Run state never comes from Slurm or
submitit (no accounting here; a job killed without a result file would make `job.result()` hang):
`SlurmLauncher.poll` asks only whether the jobs are still in the queue.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import submitit

from harness.errors import UserError
from harness.progress import progress_bar
from harness.run import records
from harness.sweep.files import JOBS_DIR, LOG_NAME
from harness.sweep.job import PackJob, unit_payload
from harness.sweep.plan import Plan, PlannedRun, write_sweep_file
from harness.sweep.status import (
    DEFAULT_STALE_MIN,
    TERMINAL,
    condition_of,
    format_status,
    read_run_status,
    sweep_status,
)


def run_sweep(plan: Plan, *, wait: bool = True, poll_s: float = 5.0, progress: bool = True) -> int:
    """Submit the plan's unfinished runs; with `wait`, follow them until every job has ended.
    Returns 0 when every planned run is done or diverged (also right after submitting, without
    `wait`)."""
    write_sweep_file(plan)
    if not plan.todo:
        _say(f"all {len(plan.runs)} run(s) of {plan.spec.name} are done or diverged; nothing to submit")
        return 0
    launcher = make_launcher(plan)
    before = {run.run_dir: read_run_status(run.run_dir).get("updated_at") for run in plan.todo}
    with _sigterm_as_interrupt():
        try:
            launcher.start(plan.packs())
            _say(launcher.describe(len(plan.todo)))
            if launcher.job_records():
                write_sweep_file(plan, jobs=launcher.job_records())
            if not wait:
                _say(f"not waiting; follow with `flowarena status {plan.sweep_dir}`")
                return 0
            follow(launcher, plan.todo, poll_s=poll_s, progress=progress, before=before)
        except KeyboardInterrupt:
            launcher.cancel()
            raise
    statuses = sweep_status(plan.sweep_dir)
    print(format_status(plan.sweep_dir, statuses, stale_after_s=DEFAULT_STALE_MIN * 60))
    planned = {run.run_dir for run in plan.runs}
    return 0 if all(s.condition in records.FINAL_STATES for s in statuses if s.run_dir in planned) else 1


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM while a sweep is followed stops it like Ctrl-C (local runs checkpoint and stop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def follow(
    launcher: Any,
    runs: list[PlannedRun],
    *,
    poll_s: float,
    progress: bool,
    before: dict[Path, Any] | None = None,
) -> None:
    """Poll the runs' status files until every job has ended (jobs whose runs have all finished get
    LINGER_S to leave the queue). `before` holds each run's status.json `updated_at` from before its
    job started: a status the job has not rewritten yet (a retried run still reads `failed`) is not
    this job's end."""
    before = before or {}
    bar = progress_bar(total=len(runs), desc="runs finished", unit="run", enabled=progress)
    finished_at: float | None = None
    with bar:
        while True:
            alive = launcher.poll()
            conditions = Counter(_condition_since(run.run_dir, before.get(run.run_dir)) for run in runs)
            finished = sum(conditions[c] for c in TERMINAL)
            bar.set_postfix({c: conditions[c] for c in ("running", "failed", "lost") if conditions[c]}, False)
            bar.update(finished - bar.n)
            if finished == len(runs):
                finished_at = finished_at or time.monotonic()
            if not alive or (finished_at and time.monotonic() - finished_at > LINGER_S):
                return
            time.sleep(poll_s)


def _condition_since(run_dir: Path, updated_before: Any) -> str:
    """The run's condition, `pending` while its status.json is still the one from before its job."""
    status = read_run_status(run_dir)
    if updated_before is not None and status.get("updated_at") == updated_before:
        return "pending"
    return condition_of(run_dir, status, stale_after_s=math.inf)


LINGER_S = 60.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SIGNAL_DELAY_S = 120  # Slurm warns (USR2) this long before the time limit
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local jobs have a time limit; ours is "none"


class LocalLauncher:
    """submitit's LocalExecutor, at most `jobs` jobs (one run each) at once."""

    def __init__(self, folder: Path, options: Any) -> None:
        self.executor = submitit.LocalExecutor(folder=folder / "local", max_num_timeout=options.max_requeues)
        self.executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, signal_delay_s=SIGNAL_DELAY_S)
        self.limit = options.jobs
        self.job = PackJob(threads=max(1, _cpu_count() // options.jobs))
        self.queue: deque[list[dict[str, Any]]] = deque()
        self.active: list[submitit.Job] = []

    def start(self, packs: list[list[list[Any]]]) -> None:
        self.queue = deque([unit_payload(unit) for unit in pack] for pack in packs)
        self._fill()

    def poll(self) -> bool:
        """Starts queued jobs as running ones end; False once all have ended."""
        self.active = [job for job in self.active if not job.done()]
        self._fill()
        return bool(self.active)

    def _fill(self) -> None:
        while self.queue and len(self.active) < self.limit:
            self.active.append(self.executor.submit(self.job, self.queue.popleft()))

    def cancel(self) -> None:
        """Ctrl-C: the jobs' runs checkpoint at their next step and stop; nothing new starts."""
        self.queue.clear()
        for job in self.active:
            job.cancel(check=False)

    def describe(self, runs: int) -> str:
        return f"running {runs} run(s) here, at most {self.limit} at once; each logs to <run_dir>/{LOG_NAME}"

    def job_records(self) -> list[dict[str, Any]]:
        return []


class SlurmLauncher:
    """A Slurm job array through submitit's SlurmExecutor; its jobs outlive this process."""

    def __init__(self, folder: Path, options: Any, name: str) -> None:
        self.options = options
        self.executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=options.max_requeues)
        try:
            self.executor.update_parameters(**slurm_parameters(options, name))
        except ValueError as error:
            raise UserError(f"bad Slurm option: {error}") from None
        threads = max(1, options.cpus_per_job // options.runs_per_job)
        self.job = PackJob(threads=threads, runs_per_gpu=options.runs_per_gpu)
        self.jobs: list[submitit.Job] = []
        self.packs: list[list[dict[str, Any]]] = []

    def start(self, packs: list[list[list[Any]]]) -> None:
        self.packs = [[unit_payload(unit) for unit in pack] for pack in packs]
        try:
            self.jobs = self.executor.map_array(self.job, self.packs)
        except (
            submitit.core.utils.UncompletedJobError,
            submitit.core.utils.FailedSubmissionError,
            OSError,
        ) as error:
            raise UserError(f"sbatch refused the job array: {str(error).strip()}") from None

    def poll(self) -> bool:
        return slurm_jobs_alive([job.job_id for job in self.jobs])

    def cancel(self) -> None:
        """Ctrl-C: the jobs keep running on the cluster; `flowarena status` follows them."""
        ids = " ".join(sorted({job.job_id.split("_")[0] for job in self.jobs}))
        print(f"the Slurm jobs keep running (scancel {ids} stops them)", file=sys.stderr)

    def describe(self, runs: int) -> str:
        array = self.jobs[0].job_id.split("_")[0] if self.jobs else "?"
        return (
            f"submitted Slurm job array {array}: {len(self.jobs)} job(s), {runs} run(s); run logs in "
            f"<run_dir>/{LOG_NAME}, job logs in {self.executor.folder.parent}"
        )

    def job_records(self) -> list[dict[str, Any]]:
        return [
            {
                "job_id": job.job_id,
                "runs": [run["label"] for unit in pack for run in unit["runs"]],
                "submitted_at": time.time(),
            }
            for job, pack in zip(self.jobs, self.packs)
        ]


def slurm_parameters(options: Any, name: str) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of the executor options."""
    params: dict[str, Any] = {
        "job_name": f"flowarena-{name}",
        "time": options.timeout_min,
        "cpus_per_task": options.cpus_per_job,
        "signal_delay_s": SIGNAL_DELAY_S,
        "stderr_to_stdout": True,
    }
    if options.gpus:
        params["gpus_per_node"] = options.gpus
    optional = {
        "partition": options.partition,
        "account": options.account,
        "qos": options.qos,
        "mem": options.mem,
        "array_parallelism": options.array_parallelism,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    if options.sbatch:
        params["additional_parameters"] = dict(options.sbatch)
    return params


def slurm_jobs_alive(job_ids: list[str]) -> bool:
    """Whether any of the jobs (array tasks included) is still in Slurm's queue: pending, running,
    requeued or completing. When the controller cannot be asked, assume they are."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    if not arrays:
        return False
    try:
        result = subprocess.run(
            ["squeue", "--noheader", "--format=%i", f"--jobs={','.join(arrays)}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True
    if result.returncode == 0:
        return bool(result.stdout.strip())
    return "Invalid job id" not in result.stderr


def make_launcher(plan: Any) -> LocalLauncher | SlurmLauncher:
    folder = plan.sweep_dir / JOBS_DIR
    options = plan.spec.executor
    if options.kind == "slurm":
        return SlurmLauncher(folder, options, plan.spec.name)
    return LocalLauncher(folder, options)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
