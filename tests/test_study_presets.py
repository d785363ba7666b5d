"""The QAM paper's data-quality and sensitivity studies as presets (`qam-quality`, `qam-sensitivity`):
their dry runs count the runs the reference's reproduce_quality.py and reproduce_sensitivity.py plan,
each run resolves to the settings those scripts give it, and a relative value `xF` (any sweep's
--set or --grid) is F times each domain's own value."""

from __future__ import annotations

import pytest
import sweep_support  # noqa: F401  (imports submitit early; see there)

import suites
from harness.cli import build_parser, main
from harness.run.spec import resolve
from harness.sweep.cli import spec_from_args
from harness.sweep.plan import Plan, make_plan
from harness.sweep.spec import QAM_QUALITY_METHODS

STEPS_PER_SECOND = 100
HUMANOID_STITCH = "humanoidmaze-medium-stitch-singletask-task3-v0"
PUZZLE_4X4 = "puzzle-4x4-play-singletask-task2-v0"
ANT_GIANT = "antmaze-giant-navigate-singletask-task1-v0"


def plan_of(*argv: str) -> Plan:
    return make_plan(spec_from_args(build_parser().parse_args(["sweep", *argv])))


def config_of(plan: Plan, variant: str, task: str):
    run = next(r for r in plan.runs if r.variant == variant and r.task == task)
    resolved = resolve(run.spec)
    return resolved.config, resolved.task


def test_qam_quality_dry_run_plans_the_scripts_runs(tmp_path, capsys):
    argv = ["sweep", "--preset", "qam-quality", "--out", str(tmp_path), "--dry-run"]
    assert main([*argv, "--steps-per-second", str(STEPS_PER_SECOND)]) == 0
    text = capsys.readouterr().out
    runs = 9 * 30 * 12  # 9 methods x 6 domains x 5 tasks x 12 seeds
    assert (
        f"9 methods x 30 tasks x 12 seeds = {runs:,} runs (methods: {', '.join(QAM_QUALITY_METHODS)})" in text
    )
    steps = runs * 1_500_000
    assert f"steps: {steps:,} (1,000,000 offline + 500,000 online per run;" in text
    assert f"estimate: {steps / STEPS_PER_SECOND / 3600:,.1f} GPU-hours" in text
    assert not (tmp_path / "qam-quality").exists()


def test_qam_quality_runs_take_their_play_or_navigate_domains_settings(tmp_path):
    plan = plan_of("--preset", "qam-quality", "--out", str(tmp_path))
    domains = {r.task.split("-singletask")[0] for r in plan.runs}
    assert domains == {
        *("cube-double-noisy", "cube-triple-noisy", "scene-noisy", "puzzle-3x3-noisy"),
        *("antmaze-large-stitch", "humanoidmaze-medium-stitch"),
    }
    config, task = config_of(plan, "qam-edit", HUMANOID_STITCH)
    assert (task.dataset, task.horizon, task.discount, task.rho) == (
        "humanoidmaze-medium-stitch-v0",
        1,
        0.995,
        0.0,
    )
    assert (config.inv_temp, config.edit_scale, config.num_critics, config.clip_grad) == (3.0, 0.1, 10, True)
    config, task = config_of(plan, "fql", "scene-noisy-singletask-task1-v0")
    assert (config.alpha, task.sparse, task.horizon, task.discount) == (300.0, True, 5, 0.99)
    config, _ = config_of(plan, "rebrac", "cube-triple-noisy-singletask-task2-v0")
    assert (config.alpha_actor, config.actor_noise) == (0.01, 0.2)


def test_qam_sensitivity_dry_run_plans_one_knob_at_a_time(tmp_path, capsys):
    argv = ["sweep", "--preset", "qam-sensitivity", "--out", str(tmp_path), "--dry-run"]
    assert main([*argv, "--steps-per-second", str(STEPS_PER_SECOND)]) == 0
    text = capsys.readouterr().out
    assert "10 variants x 10 tasks x 12 seeds = 1,200 runs (methods: qam-edit)" in text
    for variant in (
        *(f"qam-edit[inv_temp=x{f}]" for f in ("0.1", "0.3", "3", "10")),
        "qam-edit[num_critics=2]",
        *(f"qam-edit[flow_steps={t}]" for t in (1, 3, 20, 30)),
        "qam-edit[clip_grad=False]",
    ):
        assert f"\n{variant} " in text
    assert f"steps: {1200 * 1_500_000:,} (1,000,000 offline + 500,000 online per run;" in text


def test_qam_sensitivity_resolves_each_knob_from_the_domains_value(tmp_path):
    plan = plan_of("--preset", "qam-sensitivity", "--out", str(tmp_path))
    tasks = {r.task for r in plan.runs}
    assert len(tasks) == 10 and PUZZLE_4X4 in tasks and ANT_GIANT in tasks
    assert all(t.endswith("task1-v0") == ("navigate" in t) for t in tasks)
    # QAM-EDIT's per-domain inv_temp: 0.1 on puzzle-4x4, 10 on antmaze-giant (reproduce_sensitivity.py)
    for factor, on_puzzle, on_giant in (("0.1", 0.01, 1.0), ("0.3", 0.03, 3.0), ("10", 1.0, 100.0)):
        config, _ = config_of(plan, f"qam-edit[inv_temp=x{factor}]", PUZZLE_4X4)
        assert config.inv_temp == pytest.approx(on_puzzle) and config.edit_scale == 0.9
        config, _ = config_of(plan, f"qam-edit[inv_temp=x{factor}]", ANT_GIANT)
        assert config.inv_temp == pytest.approx(on_giant) and config.edit_scale == 0.1
    config, _ = config_of(plan, "qam-edit[num_critics=2]", ANT_GIANT)
    assert (config.num_critics, config.inv_temp, config.flow_steps, config.clip_grad) == (2, 10.0, 10, True)
    config, _ = config_of(plan, "qam-edit[flow_steps=20]", PUZZLE_4X4)
    assert (config.flow_steps, config.inv_temp, config.num_critics) == (20, 0.1, 10)
    config, _ = config_of(plan, "qam-edit[clip_grad=False]", PUZZLE_4X4)
    assert (config.clip_grad, config.inv_temp, config.max_grad_norm) == (False, 0.1, 1.0)


def test_a_relative_grid_resolves_per_domain_in_any_sweep(tmp_path):
    plan = plan_of(
        *("--methods", "qam,fql", "--tasks", f"{PUZZLE_4X4},{ANT_GIANT}", "--seeds", "1"),
        *("--grid", "qam.inv_temp=x0.5,x2", "--set", "fql.alpha=x3", "--set", "qam.flow_steps=x2"),
        *("--name", "rel", "--out", str(tmp_path)),
    )
    assert {r.variant for r in plan.runs} == {
        "qam[flow_steps=x2,inv_temp=x0.5]", "qam[flow_steps=x2,inv_temp=x2]", "fql[alpha=x3]"
    }  # fmt: skip
    # QAM's per-domain inv_temp: 30 on puzzle-4x4, 3 on antmaze-giant; FQL's alpha: 1 and 3
    assert config_of(plan, "qam[flow_steps=x2,inv_temp=x0.5]", PUZZLE_4X4)[0].inv_temp == 15.0
    assert config_of(plan, "qam[flow_steps=x2,inv_temp=x2]", ANT_GIANT)[0].inv_temp == 6.0
    assert config_of(plan, "qam[flow_steps=x2,inv_temp=x2]", ANT_GIANT)[0].flow_steps == 20
    assert config_of(plan, "fql[alpha=x3]", PUZZLE_4X4)[0].alpha == 3.0
    assert config_of(plan, "fql[alpha=x3]", ANT_GIANT)[0].alpha == 9.0


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("qam.flow_steps=x0.15", "qam.flow_steps=x0.15: 0.15 x 10 is not a whole number"),
        ("qam.clip_terminal=x2", "a relative value xF needs F > 0 and a numeric key (clip_terminal is True"),
        ("qam.inv_temp=x0", "a relative value xF needs F > 0"),
    ],
)
def test_a_bad_relative_value_is_one_message_before_anything_is_written(tmp_path, capsys, given, message):
    argv = ["sweep", "--methods", "qam", "--tasks", PUZZLE_4X4, "--set", given, "--name", "rel"]
    argv += ["--out", str(tmp_path)]
    assert main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_a_presets_variants_leave_no_room_for_the_same_key_in_a_grid(tmp_path, capsys):
    argv = ["sweep", "--preset", "qam-sensitivity", "--grid", "flow_steps=5,6", "--out", str(tmp_path)]
    assert main([*argv, "--dry-run"]) == 2
    assert "preset qam-sensitivity varies flow_steps itself" in capsys.readouterr().err


@pytest.mark.parametrize(("preset", "variants"), [("qam-quality", 9), ("qam-sensitivity", 10)])
def test_on_the_smoke_suite_a_preset_keeps_its_variants_on_the_suites_tasks(tmp_path, preset, variants):
    flags = ("--suite", "smoke", "--seeds", "1", "--online-steps", "10", "--online-warmup-steps", "5")
    plan = plan_of("--preset", preset, *flags, "--out", str(tmp_path))
    assert len({r.variant for r in plan.runs}) == variants and len(plan.runs) == variants * 3
    assert {r.task for r in plan.runs} == set(suites.get_suite("smoke").task_names)
    assert (plan.budget.offline_steps, plan.budget.online_steps) == (200, 10)
