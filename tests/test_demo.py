"""`flowarena demo`: the demo suite's settings, the parallel data generation it uses, and the
learning-curve demo end to end at tiny settings (its own cube-single data, two evaluations, the
PNG, the table). The `--quick` demo is tested in tests/test_qam_runs.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
from matplotlib import image

import analysis.progress
import harness.demo
import suites
from harness.cli import main
from harness.datagen import generate
from harness.run.records import RunDir
from suites.demo import DEMO_TASK


def test_the_demo_suite_runs_cube_single_with_cube_doubles_settings():
    demo, ogbench = suites.get_suite("demo"), suites.get_suite("ogbench")
    double = "cube-double-play-singletask-task1-v0"
    settings = demo.task(DEMO_TASK)
    assert (settings.horizon, settings.discount, settings.sparse, settings.rho) == (5, 0.99, False, 0.5)
    assert settings.dataset == "cube-single-play-v0"
    for method in ("qam", "fql", "qam-fql"):
        assert demo.method_overrides(method, DEMO_TASK) == ogbench.method_overrides(method, double)
    assert demo.method_overrides("fql", DEMO_TASK)["alpha"] == 300.0


def test_demo_writes_a_learning_curve_png(tmp_path, capsys, one_thread):
    data, out = tmp_path / "data", tmp_path / "results"
    args = ["demo", "--methods", "fql", "--steps", "4", "--eval-interval", "2", "--eval-episodes", "1"]
    args += ["--episodes", "2", "--episode-length", "30", "--jobs", "1", "--device", "cpu", "--no-progress"]
    args += ["--compile", "off"]  # compiling is the default (the next test); 4 steps do not need it
    assert main([*args, "--dataset-dir", str(data), "--out", str(out)]) == 0
    assert (data / "cube-single-play-v0.npz").exists()
    printed = capsys.readouterr().out
    png = out / "demo" / "learning_curves.png"
    assert f"learning curves: {png}" in printed.splitlines()
    pixels = image.imread(png)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100 and pixels.std() > 0  # an image, not blank
    evals = pd.read_parquet(next((out / "demo").glob("fql/*/seed0/evals.parquet")))
    assert evals["step"].tolist() == [2, 4] and set(evals["task"]) == {DEMO_TASK}
    assert any(line.split()[:2] == ["fql", DEMO_TASK] for line in printed.splitlines()), printed
    dataset = data / "cube-single-play-v0.npz"  # 2 episodes of 30 steps: 62 transitions
    harness.demo._say_which_dataset(dataset, wanted=62)
    assert capsys.readouterr().out == ""
    harness.demo._say_which_dataset(dataset, wanted=100)
    assert capsys.readouterr().out.startswith(f"using the 62 transitions already in {dataset}")


def test_the_demo_compiles_its_updates_unless_told_otherwise_and_quick_stays_eager(tmp_path):
    from harness.cli import build_parser

    def parsed(*extra: str):
        return build_parser().parse_args(["demo", "--out", str(tmp_path), *extra])

    plan = harness.demo._demo_plan(parsed())
    assert plan.spec.compile == "on" and plan.budget.offline_steps == 15000
    assert plan.budget.eval_interval == 3000 and plan.spec.methods == ["qam", "fql"]
    assert harness.demo._demo_plan(parsed("--compile", "off")).spec.compile == "off"
    assert parsed("--quick").compile is None  # quick_demo reads None as auto: 300 steps stay eager


def test_datagen_workers_collect_seeded_blocks_of_episodes(tmp_path):
    settings = {"episode_length": 20, "val_episodes": 1, "progress": False}
    generate("cube-single-v0", 3, tmp_path / "one", **settings)
    generate("cube-single-v0", 3, tmp_path / "two", workers=2, **settings)
    one, two = (np.load(tmp_path / d / "cube-single-play-v0.npz") for d in ("one", "two"))
    # 4 episodes of 21 recorded steps in blocks of 2: block 0 is the one-worker file's start
    assert two["qpos"].shape == one["qpos"].shape == (3 * 21, one["qpos"].shape[1])
    np.testing.assert_array_equal(two["qpos"][: 2 * 21], one["qpos"][: 2 * 21])
    assert not np.allclose(two["qpos"][2 * 21 :], one["qpos"][2 * 21 :])


def test_datagen_workers_print_no_display_warning(tmp_path):
    """glfw warns about a missing DISPLAY when MuJoCo's renderer loads it with an environment; each
    spawned worker used to print it once. The known warning is hidden, and only it."""
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    argv = ["datagen", "--env", "cube-single-v0", "--episodes", "2", "--episode-length", "5"]
    argv += ["--out", str(tmp_path), "--workers", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "DISPLAY" not in done.stderr and "precision lowered" not in done.stderr, done.stderr
    assert (tmp_path / "cube-single-play-v0.npz").exists()


def test_the_demo_step_bar_adds_up_the_runs_status_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(harness.demo, "STATUS_POLL_S", 0.01)
    monkeypatch.setattr(analysis.progress, "PLAIN_INTERVAL_S", 0.0)  # stderr is no terminal here
    runs = [SimpleNamespace(variant=name, run_dir=tmp_path / name) for name in ("qam", "fql")]
    plan = SimpleNamespace(budget=SimpleNamespace(offline_steps=100), todo=runs)
    with harness.demo._step_bar(plan, enabled=True) as bar:
        RunDir(runs[0].run_dir).write_status("running", step=30)
        deadline = time.monotonic() + 10
        while bar.n != 30 and time.monotonic() < deadline:  # the watcher thread's next poll
            time.sleep(0.01)
        assert bar.n == 30  # fql has no status.json yet: 0
        RunDir(runs[1].run_dir).write_status("running", step=50)
    assert bar.n == 80
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("training (all runs): 80/200 steps (40%)")
    assert lines[-1].endswith("qam=30 fql=50")


def test_the_demo_table_names_each_evaluation_setting(tmp_path):
    row = {"variant": "qgf", "task": DEMO_TASK, "seed": 0, "step": 10, "success": 0.5, "return": -1.0}
    row |= {"episode_length": 100.0, "wall_time_s": 2.0}
    settings = ["guidance_weight=0.01", "guidance_weight=0.1"]
    evals = pd.DataFrame([{**row, "eval_params": label} for label in settings])
    (tmp_path / "qgf" / DEMO_TASK / "seed0").mkdir(parents=True)
    evals.to_parquet(tmp_path / "qgf" / DEMO_TASK / "seed0" / "evals.parquet")
    lines = harness.demo.demo_table(tmp_path).splitlines()
    assert lines[1].split()[:4] == ["variant", "task", "seed", "eval_params"]
    assert [line.split()[3] for line in lines[2:4]] == settings
