"""The test cluster and submitit work for real: job arrays, and requeue with resume from disk.

There is no accounting daemon here (sacct fails, submitit reports UNKNOWN), so every wait below reads
files that the jobs write, never Slurm's job state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = pytest.mark.slurm

# Jobs unpickle the functions below in a fresh interpreter that cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TOTAL_STEPS = 40
# The first attempt is slow so that it is always stopped mid-way: slurmd waits max(KillWait, 5 s) after
# SIGTERM (which submitit ignores) before SIGKILL. A requeued attempt runs fast.
FIRST_STEP_S = 0.5
RESUMED_STEP_S = 0.05


def _executor(folder: Path, partition: str) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        slurm_partition=partition, cpus_per_task=1, timeout_min=3, slurm_array_parallelism=3
    )
    return executor


def _job_logs(job: submitit.Job) -> str:
    return f"stdout:\n{job.stdout() or ''}\nstderr:\n{job.stderr() or ''}"


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str, job: submitit.Job) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{_job_logs(job)}")
        time.sleep(0.2)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _append_jsonl(path: Path, payload: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(payload) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _saved_step(workdir: Path) -> int:
    try:
        return json.loads((workdir / "state.json").read_text())["step"]
    except FileNotFoundError:
        return 0


def describe_task(x: int) -> dict:
    return {
        "square": x * x,
        "array_job_id": os.environ["SLURM_ARRAY_JOB_ID"],
        "array_task_id": int(os.environ["SLURM_ARRAY_TASK_ID"]),
        "python": sys.executable,
    }


class ResumableCounter(submitit.helpers.Checkpointable):
    """Counts to `total`, saving progress after every step; a requeued attempt resumes from disk."""

    def __init__(self, workdir: str, total: int) -> None:
        self.workdir = workdir
        self.total = total

    def __call__(self) -> dict:
        workdir = Path(self.workdir)
        start = _saved_step(workdir)
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        _append_jsonl(workdir / "attempts.jsonl", {"attempt": attempt, "start": start})
        for step in range(start, self.total):
            time.sleep(RESUMED_STEP_S if attempt else FIRST_STEP_S)
            _write_json(workdir / "state.json", {"step": step + 1})
        result = {"attempt": attempt, "resumed_from": start, "step": _saved_step(workdir)}
        _write_json(workdir / "done.json", result)
        return result

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        _append_jsonl(Path(self.workdir) / "checkpoints.jsonl", {"step": _saved_step(Path(self.workdir))})
        return super().checkpoint(*args, **kwargs)


def test_job_array_results_come_back(slurm_cluster, tmp_path: Path) -> None:
    jobs = _executor(tmp_path / "submitit", slurm_cluster.partition).map_array(describe_task, [1, 2, 3])
    for job in jobs:
        _wait_until(job.done, 60, f"array task {job.job_id}", job)
    results = [job.result() for job in jobs]
    array_id = jobs[0].job_id.split("_")[0]
    assert [r["square"] for r in results] == [1, 4, 9]
    assert [r["array_task_id"] for r in results] == [0, 1, 2]
    assert {r["array_job_id"] for r in results} == {array_id}
    assert {r["python"] for r in results} == {sys.executable}


def _run_interrupted(cluster, tmp_path: Path, interrupt: list[str]) -> tuple[submitit.Job, Path]:
    """Submits a ResumableCounter, runs `interrupt + [job_id]` once it has saved 3 steps, waits for it."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    executor = _executor(tmp_path / "submitit", cluster.partition)
    job = executor.submit(ResumableCounter(str(workdir), TOTAL_STEPS))
    _wait_until(lambda: _saved_step(workdir) >= 3, 30, "the first attempt to save 3 steps", job)
    subprocess.run([*interrupt, job.job_id], check=True, capture_output=True, text=True)
    _wait_until(lambda: (workdir / "done.json").exists(), 60, "the requeued attempt to finish", job)
    _wait_until(job.done, 30, "submitit's result file", job)
    return job, workdir


def _assert_resumed(job: submitit.Job, workdir: Path) -> dict:
    attempts = _read_jsonl(workdir / "attempts.jsonl")
    assert [a["attempt"] for a in attempts] == [0, 1], _job_logs(job)
    assert attempts[0]["start"] == 0
    resumed_from = attempts[1]["start"]
    assert 3 <= resumed_from < TOTAL_STEPS, "the first attempt should have been stopped mid-way"
    expected = {"attempt": 1, "resumed_from": resumed_from, "step": TOTAL_STEPS}
    assert json.loads((workdir / "done.json").read_text()) == expected
    assert job.result() == expected
    return attempts[1]


def test_scontrol_requeue_resumes_from_disk(slurm_cluster, tmp_path: Path) -> None:
    job, workdir = _run_interrupted(slurm_cluster, tmp_path, ["scontrol", "requeue"])
    _assert_resumed(job, workdir)
    assert not (workdir / "checkpoints.jsonl").exists(), "a plain requeue does not call checkpoint()"


def test_preemption_signal_checkpoints_and_requeues(slurm_cluster, tmp_path: Path) -> None:
    # Slurm's preemption/time-limit warning: submitit catches USR2, calls checkpoint(), requeues itself.
    job, workdir = _run_interrupted(slurm_cluster, tmp_path, ["scancel", "--signal=USR2"])
    resumed = _assert_resumed(job, workdir)
    checkpoints = _read_jsonl(workdir / "checkpoints.jsonl")
    assert len(checkpoints) == 1
    assert resumed["start"] >= checkpoints[0]["step"] >= 3
