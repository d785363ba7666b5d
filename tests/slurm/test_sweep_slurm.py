"""`flowarena sweep --executor slurm` on the real one-node test cluster.

Every wait reads the runs' status files or asks whether a job is still queued (squeue); Slurm's job
state is never the source of a run's state (no accounting daemon here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sweep_support import (
    PROBE,
    activate_probe,
    attempts,
    local_reference,
    records_of,
    run_dir,
    status,
    sweep_args,
    wait_until,
)

from algorithms import registry
from harness.cli import main
from harness.sweep.launch import slurm_jobs_alive

pytestmark = pytest.mark.slurm

SLOW_STEP_S = "0.3"  # per update, in the attempts that a test interrupts


@pytest.fixture
def probe(tmp_path_factory, monkeypatch):
    activate_probe(tmp_path_factory.mktemp("probe-site"), monkeypatch)
    monkeypatch.setenv("FLOWARENA_PROBE_SLEEP_S", SLOW_STEP_S)
    yield PROBE
    registry.unregister(PROBE)


def slurm_flags(cluster, **flags: object) -> dict[str, object]:
    return {"executor": "slurm", "partition": cluster.partition, "gpus": 0, "time": 5, **flags}


def job_id(out: Path, name: str) -> str:
    jobs = json.loads((out / name / "sweep.json").read_text())["jobs"]
    assert len(jobs) == 1, jobs
    return jobs[0]["job_id"]


def job_of(header: str) -> str:
    return header.split(", job ")[1].split(",")[0].split()[0]


def restart_of(header: str) -> str:
    return header.split("restart ")[1].split()[0]


def checkpointed(path: Path, step: int) -> bool:
    return status(path).get("checkpoint_step", 0) >= step


def test_packed_sweep_survives_requeue_and_equals_the_local_sweep(
    slurm_cluster, probe, dataset_dir, tmp_path, tmp_path_factory, monkeypatch
):
    out = tmp_path / "slurm"
    args = sweep_args("ref", out, dataset_dir, **slurm_flags(slurm_cluster, runs_per_gpu=2))
    sweep = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    runs = [run_dir(out, "ref", seed) for seed in (0, 1)]
    logs = [path / "run.log" for path in runs] + [out / "ref" / "sweep.json"]
    # Requeue once one run has checkpointed and both train: neither can have finished (20 slow steps).
    wait_until(
        lambda: (
            any(checkpointed(path, 10) for path in runs)
            and all(status(path).get("state") == "running" for path in runs)
        ),
        150,
        "a run to checkpoint while both train",
        logs,
    )
    subprocess.run(["scontrol", "requeue", job_id(out, "ref")], check=True, capture_output=True)
    output, _ = sweep.communicate(timeout=180)

    assert sweep.returncode == 0, output
    assert "done 2  diverged 0  failed 0" in output
    monkeypatch.delenv("FLOWARENA_PROBE_SLEEP_S")
    reference = local_reference(dataset_dir, tmp_path_factory.mktemp("sweep-reference"))
    for seed, path in enumerate(runs):
        headers = attempts(path)
        assert [restart_of(h) for h in headers] == ["0", "1"] and len({job_of(h) for h in headers}) == 1
        assert "resuming" in (path / "run.log").read_text()
        for kind in ("evals", "train"):
            swept = records_of(path, kind)
            assert swept["step"].tolist() == [10, 20]  # nothing lost or duplicated
            pd.testing.assert_frame_equal(swept, records_of(run_dir(reference["out"], "ref", seed), kind))


def test_preempted_then_killed_job_is_reported_and_completed_by_rerun(
    slurm_cluster, probe, dataset_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FLOWARENA_PROBE_SLOW_ATTEMPTS", "2")
    out = tmp_path / "slurm"
    args = sweep_args("kill", out, dataset_dir, seeds="1", offline_steps=30, **slurm_flags(slurm_cluster))
    assert main([*args, "--no-wait"]) == 0
    path = run_dir(out, "kill", 0)
    logs = [path / "run.log"]
    job = job_id(out, "kill")

    # Time limit / preemption warning: submitit's USR2 handler checkpoints the run and requeues the job.
    wait_until(lambda: checkpointed(path, 10), 150, "the first attempt to checkpoint", logs)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True)
    wait_until(lambda: len(attempts(path)) == 2 and checkpointed(path, 20), 150, "the requeued attempt", logs)
    preempted_at = int((path / "run.log").read_text().split("stopped at step ")[1].split()[0])

    # Then the job is killed hard: every process of it, SIGKILL, no chance to save.
    listed = subprocess.run(["scontrol", "listpids", job], check=True, capture_output=True, text=True)
    for line in listed.stdout.splitlines()[1:]:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    wait_until(lambda: not slurm_jobs_alive([job]), 60, "the killed job to leave the queue", logs)
    capsys.readouterr()
    assert main(["status", str(out / "kill")]) == 0
    report = capsys.readouterr().out
    assert status(path)["state"] == "running"
    assert "lost 1" in report and f"log: {path / 'run.log'}" in report
    assert f"resumes from checkpoint step {status(path)['checkpoint_step']}" in report

    assert main(args) == 0  # the same command again
    assert status(path)["state"] == "done"
    headers = attempts(path)
    assert [restart_of(h) for h in headers] == ["0", "1", "0"]
    assert job_of(headers[0]) == job_of(headers[1]) == job != job_of(headers[2])
    log = (path / "run.log").read_text()
    assert f"from step {preempted_at}" in log and "Calling checkpoint method" in _job_logs(out / "kill")
    for kind in ("evals", "train"):
        assert records_of(path, kind)["step"].tolist() == [10, 20, 30]  # nothing lost or duplicated


def _job_logs(sweep_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((sweep_dir / ".submitit").glob("*/*.out")))
