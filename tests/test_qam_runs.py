"""QAM, QAM-FQL, QAM-EDIT and FBRAC end to end: `flowarena run` on generated data, stop and resume,
and `flowarena demo`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TASK

from algorithms import registry
from harness.cli import main
from harness.run import train

# cube-double's row of the per-domain table turns both QAM variants off (edit_scale 0, fql_alpha 0),
# so the variants are switched on here with values from other rows.
METHODS = {
    "qam": [],
    "qam-fql": ["--set", "fql_alpha=30"],
    "qam-edit": ["--set", "edit_scale=0.1"],
    "fbrac": [],
}


def run_dir(out, method: str):
    (path,) = (out / "default").glob(f"{method}*/{TASK}/seed0")
    return path


def records(path) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_parquet(path / f"{name}.parquet").drop(columns=["wall_time_s"])
        for name in ("evals", "train")
    }


@pytest.mark.parametrize("method", list(METHODS))
def test_run_finishes_and_a_stopped_run_resumes_identically(flowarena, tmp_path, method):
    extra = METHODS[method]
    assert flowarena(tmp_path / "whole", *extra, method=method, steps=20, eval_episodes=1) == 0
    whole = run_dir(tmp_path / "whole", method)
    status = json.loads((whole / "status.json").read_text())
    spec = json.loads((whole / "spec.json").read_text())
    expected = records(whole)
    assert status["state"] == "done" and status["step"] == 20
    assert expected["evals"]["step"].tolist() == [10, 20]
    assert expected["evals"]["success"].between(0, 1).all()
    assert {"critic_loss", "bc_loss", "loss"} <= set(expected["train"].columns)
    if method.startswith("qam"):
        assert spec["config"]["inv_temp"] == 1.0  # cube-double's row of the per-domain table
        assert {"adjoint_loss", "grad_norm"} <= set(expected["train"].columns)
    else:
        assert spec["config"]["alpha"] == 0.1
    if method == "qam-fql":
        assert "distill_loss" in expected["train"].columns
    if method == "qam-edit":
        assert {"alpha", "entropy", "edit_loss"} <= set(expected["train"].columns)

    train.request_stop()  # as a preemption signal handler would: checkpoint after step 1, then stop
    try:
        assert flowarena(tmp_path / "stopped", *extra, method=method, steps=20, eval_episodes=1) == 1
    finally:
        train.clear_stop()
    stopped = run_dir(tmp_path / "stopped", method)
    status = json.loads((stopped / "status.json").read_text())
    assert status["state"] == "pending" and status["checkpoint_step"] == 1
    assert flowarena(tmp_path / "stopped", *extra, method=method, steps=20, eval_episodes=1) == 0
    resumed = records(stopped)
    for name in ("evals", "train"):
        pd.testing.assert_frame_equal(resumed[name], expected[name])


def test_demo_lists_the_four_methods(dataset_dir, tmp_path, capsys):
    assert {"qam", "qam-fql", "qam-edit", "fbrac"} <= set(registry.names())  # the demo's default list
    args = ["demo", "--quick", "--methods", "qam,qam-fql,qam-edit,fbrac", "--steps", "4", "--device", "cpu"]
    args += ["--eval-episodes", "1", "--dataset-dir", str(dataset_dir), "--out", str(tmp_path)]
    assert main([*args, "--no-progress"]) == 0
    table = capsys.readouterr().out
    for method in ("qam", "qam-fql", "qam-edit", "fbrac"):
        assert any(line.split()[:1] == [method] for line in table.splitlines()), table
