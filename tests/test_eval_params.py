"""Evaluation-time parameters end to end: a QGF run evaluated for three guidance weights, then
`flowarena evaluate` re-evaluating its checkpoint for more weights without training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import TASK, run_args

from harness.cli import main
from harness.run.reevaluate import evaluate_checkpoint

RUN_DIR = Path("default/qgf") / TASK / "seed0"
LABELS = ["guidance_weight=0.004", "guidance_weight=0.01", "guidance_weight=0.04"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def qgf_run(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> Path:
    """A finished QGF run: 20 steps, evaluated at steps 10 and 20 for three weights, 1 episode each."""
    out = tmp_path_factory.mktemp("qgf-run")
    args = run_args(dataset_dir, out, method="qgf", steps=20, eval_interval=10, eval_episodes=1)
    assert main([*args, "--eval-param", "guidance_weight=0.004,0.01,0.04"]) == 0
    return out / RUN_DIR


@pytest.fixture
def run_copy(qgf_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "seed0"
    shutil.copytree(qgf_run, copy)
    return copy


def evaluate(run_dir: Path, *flags: str) -> int:
    return main(["evaluate", str(run_dir), *flags, "--device", "cpu", "--no-progress"])


def test_a_run_evaluates_every_setting_at_every_eval_step(qgf_run):
    evals = pd.read_parquet(qgf_run / "evals.parquet")
    assert evals["step"].tolist() == [10, 10, 10, 20, 20, 20]
    for _, group in evals.groupby("step"):
        assert group["eval_params"].tolist() == LABELS
        assert (group["n_episodes"] == 1).all() and (group["phase"] == "offline").all()
    spec = json.loads((qgf_run / "spec.json").read_text())
    assert spec["eval_params"] == [{"guidance_weight": w} for w in (0.004, 0.01, 0.04)]


def test_evaluate_appends_new_settings_and_changes_no_row(run_copy, capsys):
    before = pd.read_parquet(run_copy / "evals.parquet")
    assert evaluate(run_copy, "--eval-param", "guidance_weight=0.02,0.04") == 0
    out = capsys.readouterr().out
    assert "added guidance_weight=0.02" in out and "skipped guidance_weight=0.04" in out

    after = pd.read_parquet(run_copy / "evals.parquet")
    pd.testing.assert_frame_equal(after.iloc[: len(before)], before, check_exact=True)
    new = after.iloc[len(before) :]
    assert len(new) == 1
    row = new.iloc[0]
    assert row["step"] == 20 and row["eval_params"] == "guidance_weight=0.02" and row["n_episodes"] == 1
    recorded = before[before["step"] == 20].iloc[0]
    for column in ("sweep", "method", "variant", "task", "domain", "seed", "phase", "wall_time_s"):
        assert row[column] == recorded[column], column
    assert 0 <= row["success"] <= 1 and row["episode_length"] > 0

    written = (run_copy / "evals.parquet").read_bytes()
    assert evaluate(run_copy, "--eval-param", "guidance_weight=0.004,0.02") == 0  # all recorded
    assert "skipped guidance_weight=0.004, guidance_weight=0.02" in capsys.readouterr().out
    assert (run_copy / "evals.parquet").read_bytes() == written


def test_reevaluating_a_recorded_setting_reproduces_its_row(qgf_run):
    evals_bytes = (qgf_run / "evals.parquet").read_bytes()
    rows = evaluate_checkpoint(qgf_run, [{"guidance_weight": 0.04}, {}], device="cpu")
    recorded = pd.read_parquet(qgf_run / "evals.parquet")
    last = recorded[(recorded["step"] == 20) & (recorded["eval_params"] == "guidance_weight=0.04")]
    assert rows[0] == last.iloc[0].to_dict()  # every column, the numbers included
    assert rows[1]["eval_params"] == "guidance_weight=0.02"  # no setting: the declared default
    assert (qgf_run / "evals.parquet").read_bytes() == evals_bytes  # nothing written


def test_evaluate_refuses_bad_input_with_one_message(run_copy, tmp_path, capsys):
    evals = (run_copy / "evals.parquet").read_bytes()
    weights = ("--eval-param", "guidance_weight=0.02")

    def refused(run_dir: Path, *flags: str) -> str:
        assert evaluate(run_dir, *flags) == 2
        err = capsys.readouterr().err
        assert err.startswith("flowarena: error: ") and len(err.strip().splitlines()) == 1, err
        return err

    assert "not a run directory" in refused(tmp_path / "elsewhere", *weights)
    assert "no evaluation parameter 'temperature'" in refused(run_copy, "--eval-param", "temperature=1")
    assert "guidance_weight" in refused(run_copy, "--eval-param", "temperature=1")  # what it declares
    assert "comma-separated numbers" in refused(run_copy, "--eval-param", "guidance_weight=high")

    status = json.loads((run_copy / "status.json").read_text())
    (run_copy / "status.json").write_text(json.dumps({**status, "state": "running"}))
    assert "is running" in refused(run_copy, *weights)
    (run_copy / "status.json").write_text(json.dumps(status))

    spec = json.loads((run_copy / "spec.json").read_text())
    (run_copy / "spec.json").write_text(
        json.dumps({**spec, "config": {**spec["config"], "hidden_dims": [8]}})
    )
    assert "does not fit" in refused(run_copy, *weights)
    (run_copy / "spec.json").write_text(json.dumps(spec))

    (run_copy / "ckpt.pt").write_bytes(b"not a checkpoint")
    assert "unreadable" in refused(run_copy, *weights)
    (run_copy / "ckpt.pt").unlink()
    assert "no checkpoint" in refused(run_copy, *weights)
    assert (run_copy / "evals.parquet").read_bytes() == evals


def test_run_refuses_an_undeclared_or_repeated_eval_param(flowarena, tmp_path, capsys):
    assert flowarena(tmp_path, "--eval-param", "guidance_weight=0.1", method="fql") == 2
    assert "fql has no evaluation parameter 'guidance_weight' (it declares: none)" in capsys.readouterr().err
    assert flowarena(tmp_path, "--eval-param", "guidance_weight=0.01,0.010", method="qgf") == 2
    assert "guidance_weight=0.01 more than once" in capsys.readouterr().err
    assert not (tmp_path / "default").exists()  # refused before anything was written
