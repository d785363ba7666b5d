"""A run of each study, tiny, through `flowarena report --published`: a sensitivity variant written
relative to its domain's value and a method on generated noisy data, each drawn beside the released
results of its study and paired with them in the leaderboard."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.cli import main
from harness.datagen import generate

SENSITIVITY_TASK = "cube-double-play-singletask-task2-v0"  # the study's cube-double task
NOISY_TASK = "cube-double-noisy-singletask-task1-v0"
BUDGET = ["--offline-steps", "20", "--eval-interval", "20", "--eval-episodes", "1", "--no-progress"]


def tiny_run(out, dataset_dir, method: str, task: str, *extra: str) -> None:
    argv = ["run", "--method", method, "--task", task, "--suite", "smoke", "--sweep", "study"]
    assert main([*argv, "--dataset-dir", str(dataset_dir), "--out", str(out), *BUDGET, *extra]) == 0


def report(tmp_path, capsys) -> str:
    argv = ["report", str(tmp_path / "runs" / "study"), "--out", str(tmp_path / "report"), "--published"]
    assert main([*argv, "--reps", "50", "--no-progress", "--html"]) == 0
    capsys.readouterr()
    return (tmp_path / "report" / "report.md").read_text()


def test_a_relative_sensitivity_variant_runs_and_reports_beside_the_released_one(
    dataset_dir, tmp_path, capsys
):
    tiny_run(tmp_path / "runs", dataset_dir, "qam-edit", SENSITIVITY_TASK, "--set", "inv_temp=x0.3")
    run_dir = tmp_path / "runs" / "study" / "qam-edit[inv_temp=x0.3]" / SENSITIVITY_TASK / "seed0"
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["config"]["inv_temp"] == pytest.approx(0.3) and spec["overrides"] == {"inv_temp": "x0.3"}
    text = report(tmp_path, capsys)
    assert "![Sensitivity](sensitivity.png)" in text and "qam-edit[inv_temp=x0.3] (published)" in text
    knobs = pd.read_csv(tmp_path / "report" / "sensitivity.csv", keep_default_na=False)
    assert set(zip(knobs["series"], knobs["value"], knobs["default"])) == {
        ("sweep", "x0.3", False), ("published", "x0.3", False), ("published", "x1", True)
    }  # fmt: skip
    released = knobs[(knobs["series"] == "published") & (knobs["value"] == "x0.3")].iloc[0]
    assert (released["n_tasks"], released["n_seeds"]) == (1, 12)
    assert "data:image/png;base64" in (tmp_path / "report" / "report.html").read_text()


def test_a_method_on_generated_noisy_data_reports_beside_its_released_noisy_and_play_values(tmp_path, capsys):
    data = tmp_path / "data"
    generate("cube-double-v0", 2, data, episode_length=100, dataset_type="noisy", progress=False)
    tiny_run(tmp_path / "runs", data, "fql", NOISY_TASK)
    text = report(tmp_path, capsys)
    assert "![Data quality](data_quality.png)" in text and "fql (published)" in text
    table = pd.read_csv(tmp_path / "report" / "data_quality.csv")
    assert set(zip(table["variant"], table["data"])) == {
        ("fql", "noisy"), ("fql (published)", "noisy"), ("fql (published)", "play")
    }  # fmt: skip
    sizes = table.set_index(["variant", "data"])[["n_tasks", "n_seeds"]]
    assert sizes.loc[("fql (published)", "noisy")].tolist() == [1, 12]  # the released runs on this task
    assert sizes.loc[("fql (published)", "play")].tolist() == [1, 12]  # cube-double-play's task1
