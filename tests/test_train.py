"""End-to-end runs through `flowarena run`: records, resume after a kill, divergence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TASK, kill_after_checkpoint, run_args

from harness.run.records import EVAL_COLUMNS

RUN_DIR = Path("default/fql") / TASK / "seed0"


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["wall_time_s"]).reset_index(drop=True)


def test_run_writes_the_run_directory(flowarena, tmp_path):
    assert flowarena(tmp_path) == 0
    run_dir = tmp_path / RUN_DIR
    spec = json.loads((run_dir / "spec.json").read_text())
    status = json.loads((run_dir / "status.json").read_text())
    evals = pd.read_parquet(run_dir / "evals.parquet")
    train = pd.read_parquet(run_dir / "train.parquet")
    assert spec["method"] == "fql" and spec["task"] == TASK and spec["seed"] == 0
    assert spec["config"]["hidden_dims"] == [64, 64]  # the smoke suite's tiny config
    assert spec["config"]["alpha"] == 300  # cube-double's FQL alpha from the per-domain table
    assert spec["task_settings"]["horizon"] == 5 and "torch" in spec["packages"]
    assert status["state"] == "done" and status["step"] == 40
    assert list(evals.columns) == EVAL_COLUMNS
    assert evals["step"].tolist() == [20, 40]
    assert (evals["n_episodes"] == 2).all() and evals["success"].between(0, 1).all()
    assert (evals["episode_length"] > 0).all() and (evals["domain"] == "cube-double-play").all()
    assert train["step"].tolist() == [10, 20, 30, 40]
    assert {"critic_loss", "bc_loss", "loss"} <= set(train.columns)
    assert (run_dir / "ckpt.pt").exists()

    before = (run_dir / "evals.parquet").read_bytes()
    assert flowarena(tmp_path) == 0  # a finished run is not run again
    assert (run_dir / "evals.parquet").read_bytes() == before


def test_killed_run_resumes_with_the_same_records(dataset_dir, tmp_path):
    args = run_args(dataset_dir, tmp_path / "whole", steps=60, checkpoint_interval=20)
    subprocess.run([sys.executable, "-m", "harness.cli", *args], check=True, capture_output=True)

    killed_out = tmp_path / "killed"
    args = run_args(dataset_dir, killed_out, steps=60, checkpoint_interval=20)
    status = kill_after_checkpoint(args, killed_out / RUN_DIR / "status.json", 20)
    assert status["state"] == "running" and status["step"] < 60  # killed mid-run

    subprocess.run([sys.executable, "-m", "harness.cli", *args], check=True, capture_output=True)
    whole = tmp_path / "whole" / RUN_DIR
    resumed = killed_out / RUN_DIR
    for name in ("evals.parquet", "train.parquet"):
        expected = comparable(pd.read_parquet(whole / name))
        got = comparable(pd.read_parquet(resumed / name))
        pd.testing.assert_frame_equal(got, expected)
    assert pd.read_parquet(resumed / "evals.parquet")["step"].tolist() == [30, 60]


def test_nan_loss_ends_the_run_as_diverged(flowarena, tmp_path):
    assert flowarena(tmp_path, "--set", "lr=1e12") == 1
    run_dir = tmp_path / "default" / "fql[lr=1e+12]" / TASK / "seed0"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "diverged"
    assert status["step"] == 2 and status["metric"] == "critic_loss"
    assert "critic_loss" in status["error"]
    assert not (run_dir / "ckpt.pt").exists()  # no checkpoint of diverged parameters


def test_changed_spec_is_refused_without_touching_the_run(flowarena, tmp_path, capsys):
    assert flowarena(tmp_path, steps=20) == 0
    evals = (tmp_path / RUN_DIR / "evals.parquet").read_bytes()
    assert flowarena(tmp_path, steps=30) == 2
    assert "different budget" in capsys.readouterr().err
    assert (tmp_path / RUN_DIR / "evals.parquet").read_bytes() == evals


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_device_flag(flowarena, tmp_path, device):
    assert flowarena(tmp_path, "--device", device, steps=10) == 0


def test_stop_request_checkpoints_and_the_rerun_completes_identically(flowarena, tmp_path):
    from harness.run import train

    assert flowarena(tmp_path / "whole", steps=20) == 0
    train.request_stop()  # as a preemption signal handler would
    try:
        assert flowarena(tmp_path / "stopped", steps=20) == 1
    finally:
        train.clear_stop()
    run_dir = tmp_path / "stopped" / RUN_DIR
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "pending" and status["checkpoint_step"] == 1
    assert flowarena(tmp_path / "stopped", steps=20) == 0
    for name in ("evals.parquet", "train.parquet"):
        expected = comparable(pd.read_parquet(tmp_path / "whole" / RUN_DIR / name))
        pd.testing.assert_frame_equal(comparable(pd.read_parquet(run_dir / name)), expected)
