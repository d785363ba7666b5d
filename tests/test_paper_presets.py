"""The QAM paper's tables as sweep presets: `--preset qam-paper` (offline) and `qam-paper-online`
name every method x task x seed of the published results, their dry runs print the run count and
GPU-hours, flags override a preset's suite, seeds and budgets, and a missing method is one message."""

from __future__ import annotations

import sweep_support  # noqa: F401  (imports submitit early; see there)

import analysis
from algorithms import registry
from harness.cli import build_parser, main
from harness.sweep.cli import spec_from_args
from harness.sweep.plan import Plan, make_plan
from harness.sweep.spec import PRESETS, QAM_PAPER_METHODS

STEPS_PER_SECOND = 100


def plan_of(*argv: str) -> Plan:
    return make_plan(spec_from_args(build_parser().parse_args(["sweep", *argv])))


def dry_run(capsys, *argv: str) -> str:
    assert main(["sweep", *argv, "--dry-run", "--steps-per-second", str(STEPS_PER_SECOND)]) == 0
    return capsys.readouterr().out


def test_presets_hold_the_published_methods_of_each_table():
    published = analysis.load_published()
    offline = set(published.loc[published["phase"] == "offline", "method"])
    online = set(published.loc[published["phase"] == "online", "method"])
    assert len(QAM_PAPER_METHODS) == 16 and set(QAM_PAPER_METHODS) == offline
    assert set(PRESETS["qam-paper"].methods) == offline
    assert set(PRESETS["qam-paper-online"].methods) == online == offline | {"rlpd"}


def test_qam_paper_dry_run_prints_the_whole_offline_table(tmp_path, capsys):
    text = dry_run(capsys, "--preset", "qam-paper", "--out", str(tmp_path))
    runs = 16 * 50 * 12
    assert (
        f"16 methods x 50 tasks x 12 seeds = {runs:,} runs (methods: {', '.join(QAM_PAPER_METHODS)})" in text
    )
    assert f"runs: {runs} planned, 0 done or diverged (skipped), {runs} to run" in text
    steps = runs * 1_000_000  # offline only: the ogbench suite's 1M steps, no online phase
    assert f"steps: {steps:,} (1,000,000 offline + 0 online per run;" in text
    hours = steps / STEPS_PER_SECOND / 3600
    assert f"estimate: {hours:,.1f} GPU-hours = {steps:,} steps / {STEPS_PER_SECOND} steps/s" in text
    assert "26,666.7 GPU-hours" in text
    assert not tmp_path.joinpath("qam-paper").exists()


def test_qam_paper_online_dry_run_adds_rlpd_online_only(tmp_path, capsys):
    text = dry_run(capsys, "--preset", "qam-paper-online", "--out", str(tmp_path))
    runs = 17 * 50 * 12
    assert f"17 methods x 50 tasks x 12 seeds = {runs:,} runs" in text and text.count("rlpd") >= 2
    assert f"runs: {runs} planned" in text
    # 16 methods x 600 runs x (1M offline + 500K online), rlpd 600 runs x 500K online (its protocol)
    steps = 16 * 600 * 1_500_000 + 600 * 500_000
    assert f"steps: {steps:,} (1,000,000 offline + 500,000 online per run (rlpd by its protocol: 0 " in text
    assert f"estimate: {steps / STEPS_PER_SECOND / 3600:,.1f} GPU-hours = {steps:,} steps" in text
    assert "40,833.3 GPU-hours" in text


def test_flags_override_a_presets_suite_seeds_and_budgets(tmp_path):
    plan = plan_of("--preset", "qam-paper", "--suite", "smoke", "--seeds", "2", "--out", str(tmp_path))
    assert plan.spec.name == "qam-paper" and plan.spec.methods == list(QAM_PAPER_METHODS)
    assert len(plan.runs) == 16 * 3 * 2 and {run.seed for run in plan.runs} == {0, 1}
    assert plan.budget.offline_steps == 200 and plan.budget.online_steps == 0  # smoke's budgets
    plan = plan_of(
        *("--preset", "qam-paper", "--tasks", "scene-play", "--online-steps", "10000", "--out", str(tmp_path))
    )
    assert len(plan.runs) == 16 * 5 * 12 and plan.spec.suite == "ogbench"
    assert (plan.budget.offline_steps, plan.budget.online_steps) == (1_000_000, 10_000)


def test_the_online_preset_needs_an_online_phase(tmp_path, capsys):
    argv = ["sweep", "--preset", "qam-paper-online", "--suite", "smoke", "--out", str(tmp_path), "--dry-run"]
    assert main(argv) == 2
    assert "suite smoke has no online phase; give --online-steps N" in capsys.readouterr().err
    plan = plan_of(*argv[1:-1], "--online-steps", "20", "--online-warmup-steps", "5", "--seeds", "1")
    budgets = {run.method: run.spec.budget for run in plan.runs}
    assert (budgets["qam"].offline_steps, budgets["qam"].online_steps) == (200, 20)
    assert (budgets["rlpd"].offline_steps, budgets["rlpd"].online_steps) == (0, 20)


def test_a_preset_with_unregistered_methods_names_every_missing_one(tmp_path, capsys, monkeypatch):
    registry.names()  # discover the built-in methods before hiding two of them
    for name in ("fedit", "cgql-m"):
        monkeypatch.delitem(registry._methods, name)
    assert main(["sweep", "--preset", "qam-paper", "--out", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "preset qam-paper runs 16 methods, but 2 of them are not registered here: fedit, cgql-m" in err
    assert err.count("\n") == 1
