"""Sweep specs, plans, dry runs, status and collect, without training anything (fast)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import sweep_support  # noqa: F401  (imports submitit early; see there)

from harness.cli import build_parser, main
from harness.errors import UserError
from harness.run import records
from harness.run.spec import resolve
from harness.sweep.cli import spec_from_args
from harness.sweep.files import HEARTBEAT_NAME, LOG_NAME
from harness.sweep.launch import slurm_parameters
from harness.sweep.options import parse_time
from harness.sweep.plan import Plan, PlannedRun, describe_plan, make_plan, write_sweep_file
from suites.ogbench import PAPER_TABLE

CUBE = "cube-double-play-singletask-task1-v0"
PUZZLE = "puzzle-3x3-play-singletask-task1-v0"


def plan_of(*argv: str) -> Plan:
    args = build_parser().parse_args(["sweep", *argv])
    return make_plan(spec_from_args(args))


def test_set_and_grid_name_one_variant_per_value_on_every_task(tmp_path):
    plan = plan_of(
        *("--name", "abl", "--suite", "smoke", "--methods", "qam,fbrac", "--tasks", f"{CUBE},{PUZZLE}"),
        *("--seeds", "0,5", "--grid", "qam.inv_temp=1,3", "--set", "fbrac.alpha=5", "--set", "lr=1e-4"),
        *("--out", str(tmp_path)),
    )
    variants = {run.variant for run in plan.runs}
    # The suite's inv_temp is 1 on cube-double and 3 on puzzle-3x3: each grid value keeps its name anyway.
    assert variants == {"qam[inv_temp=1,lr=0.0001]", "qam[inv_temp=3,lr=0.0001]", "fbrac[alpha=5,lr=0.0001]"}
    assert len(plan.runs) == 3 * 2 * 2 and plan.todo == plan.runs
    run = next(
        r for r in plan.runs if r.variant.startswith("qam[inv_temp=1") and r.task == PUZZLE and r.seed == 5
    )
    assert run.run_dir == tmp_path / "abl" / "qam[inv_temp=1,lr=0.0001]" / PUZZLE / "seed5"
    resolved = resolve(run.spec)
    assert resolved.config.inv_temp == 1 and resolved.config.lr == 1e-4 and resolved.path == run.run_dir
    assert {r.spec.overrides.get("alpha") for r in plan.runs if r.method == "fbrac"} == {"5"}


def test_toml_spec_with_flags_on_top(tmp_path):
    spec_file = tmp_path / "abl.toml"
    spec_file.write_text(
        f"""
name = "from-toml"
suite = "smoke"
methods = ["qam", "fql"]
tasks = ["cube-double-play"]   # a domain: its tasks in the suite
seeds = [0, 2]
out = "{tmp_path / "results"}"

[budget]
offline_steps = 300
eval_interval = 100

[set]
lr = 0.001
[set.fql]
alpha = 30

[grid.qam]
inv_temp = [0.3, 10]

[executor]
kind = "slurm"
runs_per_gpu = 2
partition = "gpu"
sbatch = {{ constraint = "a100" }}
"""
    )
    plan = plan_of(str(spec_file), "--seeds", "3", "--offline-steps", "400", "--gpus", "0")
    spec = plan.spec
    assert spec.name == "from-toml" and spec.methods == ["qam", "fql"] and spec.seeds == [0, 1, 2]
    assert plan.budget.offline_steps == 400 and plan.budget.eval_interval == 100
    assert (
        plan.budget.eval_episodes == 2 and plan.budget.checkpoint_interval == 100
    )  # the suite's, run's rule
    assert {r.variant for r in plan.runs} == {
        "qam[inv_temp=0.3,lr=0.001]",
        "qam[inv_temp=10,lr=0.001]",
        "fql[alpha=30,lr=0.001]",
    }
    assert {r.task for r in plan.runs} == {CUBE} and len(plan.runs) == 9
    executor = spec.executor
    assert (executor.kind, executor.runs_per_job, executor.partition) == ("slurm", 2, "gpu")
    params = slurm_parameters(executor, spec.name)
    assert params["partition"] == "gpu" and params["additional_parameters"] == {"constraint": "a100"}
    assert "gpus_per_node" not in params and params["cpus_per_task"] == 2 and params["time"] == 240
    assert [len(pack) for pack in plan.packs()] == [2, 2, 2, 2, 1]


def test_adjoint_vs_bptt_preset_runs_qam_and_fbrac_at_the_paper_settings(tmp_path):
    plan = plan_of("--preset", "adjoint-vs-bptt", "--suite", "smoke", "--seeds", "1", "--out", str(tmp_path))
    assert plan.spec.name == "adjoint-vs-bptt" and {r.variant for r in plan.runs} == {"qam", "fbrac"}
    for run in plan.runs:
        config = resolve(run.spec).config
        qam_temp, _, _, _, fbrac_alpha = PAPER_TABLE[resolve(run.spec).task.domain]
        assert (config.inv_temp if run.method == "qam" else config.alpha) == (
            qam_temp if run.method == "qam" else fbrac_alpha
        )
    assert len(plan.runs) == 2 * 3


def test_dry_run_prints_runs_jobs_and_gpu_hours_and_writes_nothing(tmp_path, capsys):
    argv = ["sweep", "--name", "dry", "--suite", "smoke", "--methods", "qam,fbrac", "--seeds", "2"]
    argv += ["--out", str(tmp_path / "out"), "--executor", "slurm", "--runs-per-gpu", "4", "--dry-run"]
    assert main([*argv, "--steps-per-second", "2"]) == 0
    text = capsys.readouterr().out
    assert "runs: 12 planned, 0 done or diverged (skipped), 12 to run" in text
    assert "jobs: 3 Slurm array job(s) of up to 4 run(s)" in text
    assert "steps: 2,400 (200 offline + 0 online per run" in text
    assert "estimate: 0.3 GPU-hours = 2,400 steps / 2 steps/s / 3600" in text
    assert "qam          3      2     6       6" in text
    assert not (tmp_path / "out").exists()


def test_a_domain_outside_the_suite_expands_to_its_five_tasks(tmp_path):
    # smoke lists cube-double-play; cube-single-play is an OGBench domain it does not have.
    plan = plan_of(
        *(
            "--name",
            "dom",
            "--suite",
            "smoke",
            "--methods",
            "fql",
            "--tasks",
            "cube-single-play,cube-double-play",
        ),
        *("--seeds", "1", "--out", str(tmp_path)),
    )
    tasks = [run.task for run in plan.runs]
    single = [f"cube-single-play-singletask-task{i}-v0" for i in range(1, 6)]
    assert tasks[:5] == single
    assert set(tasks[5:]) == {t for t in tasks if t.startswith("cube-double-play")} and len(tasks) > 5


def _fake_run(run: PlannedRun, state: str, **fields) -> records.RunDir:
    run_dir = records.RunDir(run.run_dir)
    run_dir.write_spec(resolve(run.spec).record_spec())
    run_dir.write_status(state, **fields)
    return run_dir


def test_plan_skips_finished_runs_and_refuses_a_directory_of_another_run(tmp_path, capsys):
    argv = ["--name", "re", "--suite", "smoke", "--methods", "fql", "--tasks", CUBE, "--seeds", "3"]
    argv += ["--out", str(tmp_path)]
    plan = plan_of(*argv)
    _fake_run(plan.runs[0], "done", step=200)
    _fake_run(plan.runs[1], "diverged", step=50)
    _fake_run(plan.runs[2], "failed", step=70)
    assert [run.seed for run in plan_of(*argv).todo] == [2]
    assert main(["sweep", *argv, "--dry-run"]) == 0
    assert "3 planned, 2 done or diverged (skipped), 1 to run" in capsys.readouterr().out
    with pytest.raises(UserError, match="holds a run with a different budget"):
        plan_of(*argv, "--offline-steps", "100")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "qamm"], "unknown method 'qamm'"),
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--tasks", "cube-dbl"], "not in suite 'smoke'"),
        (["--set", "qam.inv_tmp=3"], "did you mean 'inv_temp'"),
        (["--set", "qam.inv_temp=hot"], "inv_temp expects float"),
        (["--set", "fql.alpha=3"], "fql is not a method of this sweep"),
        (["--methods", "qam,fbrac", "--set", "inv_temp=3"], "fbrac has no config key 'inv_temp'"),
        (["--grid", "qam.inv_temp"], "--grid expects [METHOD.]KEY=VALUE"),
        (["--grid", "qam.inv_temp=1,,3"], "no empty value"),
        (["--grid", "qam.inv_temp=1,1"], "repeats a value"),
        (["--grid", "qam.inv_temp=1,3", "--set", "qam.inv_temp=2"], "both --set and --grid"),
        (["--seeds", "0"], "--seeds expects"),
        (["--executor", "pbs"], "unknown executor 'pbs'"),
        (["--runs-per-gpu", "2"], "apply to --executor slurm"),
        (["--executor", "slurm", "--runs-per-gpu", "0"], "--runs-per-gpu must be an integer >= 1"),
        (["--executor", "slurm", "--jobs", "4"], "--jobs applies to --executor local"),
        (["--executor", "slurm", "--time", "ten"], "--time expects"),
        (["--executor", "slurm", "--sbatch=--exclusive"], "--sbatch expects KEY=VALUE"),
        (["--no-wait"], "--no-wait needs --executor slurm"),
        (["--preset", "bptt"], "unknown preset 'bptt'"),
        (["--preset", "adjoint-vs-bptt"], "drop --methods qam"),
        (["--eval-param", "qam.guidance_weight=0.1"], "qam has no evaluation parameter"),
        (["--offline-steps", "-1"], "--offline-steps must be"),
    ],
)
def test_bad_input_is_one_message_and_exit_code_2(tmp_path, capsys, extra, message):
    argv = ["sweep", "--name", "bad", "--suite", "smoke", "--out", str(tmp_path / "out"), "--seeds", "1"]
    methods = [] if "--methods" in extra else ["--methods", "qam"]
    assert main([*argv, *methods, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_no_name_and_bad_toml_are_user_errors(tmp_path, capsys):
    assert main(["sweep", "--methods", "qam", "--dry-run"]) == 2
    assert "give the sweep a --name" in capsys.readouterr().err
    spec_file = tmp_path / "bad.toml"
    spec_file.write_text('name = "x"\nmethod = ["qam"]\n')
    assert main(["sweep", str(spec_file), "--dry-run"]) == 2
    assert "unknown key 'method'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("4:00:00", 240), ("1-00:00:00", 1440), ("2-3", 3060), ("30:30", 31), ("0:00:30", 1)],
)
def test_slurm_time_limits(text, minutes):
    assert parse_time(text) == minutes


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _status_sweep(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A sweep directory whose runs are in every condition, written by hand."""
    sweep_dir = tmp_path / "st"
    names = ["done", "failed", "lost", "stale", "running", "pending"]
    dirs = {n: sweep_dir / "fql" / CUBE / f"seed{i}" for i, n in enumerate(names)}
    entries = [
        {"method": "fql", "variant": "fql", "task": CUBE, "seed": i, "run_dir": f"fql/{CUBE}/seed{i}"}
        for i in range(len(names))
    ]
    records.write_json(sweep_dir / "sweep.json", {"runs": entries})
    old, here = time.time() - 7200, socket.gethostname()
    statuses = {
        "done": {"state": "done", "step": 200},
        "failed": {"state": "failed", "step": 70, "error": "RuntimeError: boom\nmore detail"},
        "lost": {"state": "running", "step": 90, "checkpoint_step": 50, "host": here, "pid": _dead_pid()},
        "stale": {"state": "running", "step": 40, "host": "elsewhere", "pid": 1, "updated_at": old},
        "running": {"state": "running", "step": 10, "host": "elsewhere", "pid": 1, "updated_at": old},
    }
    for name, status in statuses.items():
        dirs[name].mkdir(parents=True)
        records.write_json(dirs[name] / "status.json", {"updated_at": time.time(), **status})
    (dirs["failed"] / LOG_NAME).write_text("Traceback ...\nRuntimeError: boom\n")
    (dirs["running"] / HEARTBEAT_NAME).touch()  # its heartbeat is fresh
    return sweep_dir, dirs


def test_status_reports_failures_and_lost_runs_with_their_logs(tmp_path, capsys):
    sweep_dir, dirs = _status_sweep(tmp_path)
    assert main(["status", str(sweep_dir)]) == 0
    text = capsys.readouterr().out
    assert "done 1  diverged 0  failed 1  running 1  lost 1  stale 1  pending 1" in text
    assert f"fql {CUBE} seed1: failed at step 70: RuntimeError: boom\n" in text
    assert f"log: {dirs['failed'] / 'run.log'}\n" in text
    assert f"fql {CUBE} seed2: step 90, resumes from checkpoint step 50" in text and "(not alive)" in text
    assert f"fql {CUBE} seed3: step 40, restarts from step 0; last sign of life 120 min ago" in text
    assert "rerun the sweep" in text
    assert main(["status", str(sweep_dir), "--json"]) == 0
    rows = {row["seed"]: row for row in json.loads(capsys.readouterr().out)}
    assert [rows[i]["condition"] for i in range(6)] == [
        "done",
        "failed",
        "lost",
        "stale",
        "running",
        "pending",
    ]
    assert rows[1]["log"] == str(dirs["failed"] / "run.log") and rows[5]["log"] is None
    assert main(["status", str(sweep_dir), "--stale-after", "500"]) == 0
    assert "stale 0" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "nowhere")]) == 2


def _evals(seed: int, steps: list[int]) -> list[dict]:
    return [
        {"sweep": "col", "method": "fql", "variant": "fql", "task": CUBE, "domain": "cube-double-play"}
        | {"seed": seed, "phase": "offline", "step": step, "success": 0.5, "return": -1.0}
        | {"episode_length": 100.0, "n_episodes": 2, "eval_params": "", "wall_time_s": 1.0}
        for step in steps
    ]


def test_collect_merges_sorted_rows_atomically_and_idempotently(tmp_path, capsys):
    sweep_dir = tmp_path / "col"
    entries = [
        {"method": "fql", "variant": "fql", "task": CUBE, "seed": s, "run_dir": f"fql/{CUBE}/seed{s}"}
        for s in range(3)
    ]
    records.write_json(sweep_dir / "sweep.json", {"runs": entries})
    assert main(["collect", str(sweep_dir)]) == 2
    assert "no run has evals yet" in capsys.readouterr().err
    for seed in (1, 0):
        run_dir = records.RunDir(sweep_dir / "fql" / CUBE / f"seed{seed}")
        run_dir.append_rows("evals", _evals(seed, [20, 10] if seed else [10]))
        run_dir.write_status("done" if seed else "running", step=20)
    assert main(["collect", str(sweep_dir)]) == 0
    text = capsys.readouterr().out
    assert "3 evals row(s) from 2 run(s)" in text and f"fql {CUBE} seed2 (pending)" in text
    assert f"not finished yet (their rows so far are included): fql {CUBE} seed0" in text
    merged = pd.read_parquet(sweep_dir / "evals.parquet")
    assert list(merged.columns) == records.EVAL_COLUMNS
    assert list(zip(merged["seed"], merged["step"])) == [(0, 10), (1, 10), (1, 20)]
    first = (sweep_dir / "evals.parquet").read_bytes()
    os.utime(sweep_dir / "evals.parquet", (0, 0))
    assert main(["collect", str(sweep_dir)]) == 0
    assert (sweep_dir / "evals.parquet").read_bytes() == first
    assert not list(sweep_dir.glob(".evals.parquet.*"))  # no temporary file left


def test_sweep_file_lists_the_runs_of_every_invocation(tmp_path):
    argv = ["--name", "grow", "--suite", "smoke", "--methods", "fql", "--tasks", CUBE, "--out", str(tmp_path)]
    write_sweep_file(plan_of(*argv, "--seeds", "0,1"))
    path = write_sweep_file(plan_of(*argv, "--seeds", "1-2"))
    saved = json.loads(path.read_text())
    assert [(run["seed"], run["run_dir"]) for run in saved["runs"]] == [
        (seed, f"fql/{CUBE}/seed{seed}") for seed in (1, 2, 0)
    ]
    assert saved["spec"]["seeds"] == [1, 2] and saved["budget"]["offline_steps"] == 200
    assert {"method", "variant", "task", "seed", "run_dir"} == set(saved["runs"][0])


def test_packed_runs_are_spread_over_the_jobs_gpus(monkeypatch):
    from harness.sweep.job import PackJob

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    job = PackJob(threads=1, runs_per_gpu=2)
    assert [job._gpu_env(i) for i in range(4)] == [{"CUDA_VISIBLE_DEVICES": d} for d in "2255"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert job._gpu_env(3) == {}  # one GPU: every run shares it


def test_seeds_per_process_packs_seeds_of_one_variant_and_task(tmp_path):
    plan = plan_of(
        "--name", "stacked", "--suite", "smoke", "--methods", "qam,fql", "--tasks", CUBE, "--seeds", "3",
        "--seeds-per-process", "2", "--executor", "slurm", "--runs-per-gpu", "3", "--out", str(tmp_path),
    )  # fmt: skip
    units = [[(run.variant, run.seed) for run in unit] for unit in plan.units()]
    assert units == [[("qam", 0), ("qam", 1)], [("qam", 2)], [("fql", 0), ("fql", 1)], [("fql", 2)]]
    assert [len(pack) for pack in plan.packs()] == [3, 1]  # processes per job
    text = describe_plan(plan)
    assert "of up to 3 process(es)" in text and "6 run(s) in 4 process(es)" in text
    with pytest.raises(UserError, match="--seeds-per-process must be an integer >= 1"):
        plan_of("--name", "bad", "--suite", "smoke", "--methods", "qam", "--seeds-per-process", "0")


class _FakeLauncher:
    """A launcher whose one job stays alive for `alive_polls` polls; `finish` runs at the first."""

    def __init__(self, alive_polls: int, finish=None) -> None:
        self.polls, self.alive_polls, self.finish = 0, alive_polls, finish

    def poll(self) -> bool:
        self.polls += 1
        if self.polls == 1 and self.finish:
            self.finish()
        return self.polls <= self.alive_polls


def test_following_a_retried_run_waits_for_its_job_not_its_old_status(tmp_path, monkeypatch):
    """A failed run that a sweep retries reads `failed` until its new job writes; the sweep must not
    take that old status for the job's end (it once left a slow-starting job and the runs queued
    behind it)."""
    from harness.sweep import launch
    from harness.sweep.status import read_run_status

    monkeypatch.setattr(launch, "LINGER_S", 0.0)
    run_dir = tmp_path / "fql" / "task" / "seed0"
    records.RunDir(run_dir).write_status("failed", error="an earlier attempt")
    run = PlannedRun("fql", "fql", "task", 0, run_dir, None, "failed")
    before = {run_dir: read_run_status(run_dir)["updated_at"]}
    quiet = _FakeLauncher(alive_polls=5)
    launch.follow(quiet, [run], poll_s=0.0, progress=False, before=before)
    assert quiet.polls == 6  # until the job ended, although the status said `failed` throughout
    time.sleep(0.01)  # a later updated_at
    done = _FakeLauncher(alive_polls=1000, finish=lambda: records.RunDir(run_dir).write_status("done"))
    launch.follow(done, [run], poll_s=0.0, progress=False, before=before)
    assert done.polls < 1000  # the rewritten status ends the wait (after LINGER_S), the job may linger
