"""Seeds a claim needs (analysis/power.py, `flowarena plan-seeds`): the simulation against the closed-form
normal case and against the released QAM and FQL seeds; GPU-hours as the sweep dry run computes them."""

from __future__ import annotations

import numpy as np
import pytest

import analysis
from analysis.power import deviations, normal_power, null_differences, power_from_null, released_scores
from harness.cli import main


# Both sides run; B published at 12 seeds; a sweep of 4 of the 10 tasks, drawn anew in each simulation.
@pytest.mark.parametrize(("n_a", "n_b", "n_tasks"), [(4, 4, None), (3, 12, None), (5, 5, 4)])
def test_simulated_power_matches_the_closed_form_for_normal_seeds(n_a, n_b, n_tasks):
    rng = np.random.default_rng(0)
    sigma_a, sigma_b = np.linspace(4.0, 20.0, 10), np.linspace(10.0, 2.0, 10)
    released_a = rng.normal(50.0, sigma_a[:, None], size=(10, 1000))
    released_b = rng.normal(30.0, sigma_b[:, None], size=(10, 1000))
    null = null_differences(
        deviations(released_a), deviations(released_b), released_b.mean(axis=1), n_a, n_b,
        sims=20_000, rng=np.random.default_rng(1), n_tasks=n_tasks,
    )  # fmt: skip
    per_task = released_a.var(axis=1, ddof=1) / n_a + released_b.var(axis=1, ddof=1) / n_b
    variance = per_task.mean() / (n_tasks or 10)  # given the drawn tasks the runs are independent
    assert null.mean() == pytest.approx(0.0, abs=0.05)
    assert null.std() == pytest.approx(np.sqrt(variance), rel=0.02)
    effects = [0.0, 1.0, 2.0, 3.0, 5.0]
    simulated = power_from_null(null, effects, alpha=0.05)
    exact = [normal_power(e, np.sqrt(variance), 0.05) for e in effects]
    assert simulated == pytest.approx(exact, abs=0.02)
    assert simulated[0] == pytest.approx(0.05, abs=0.01)  # the level holds under the null


def test_released_qam_vs_fql_gap_is_well_powered_and_one_point_is_not():
    qam, fql, tasks = released_scores("qam", "fql")
    assert len(tasks) == 50 and qam.shape == fql.shape == (50, 12)
    assert (round(qam.mean(), 1), round(fql.mean(), 1)) == (44.4, 35.7)
    plan = analysis.seeds_needed("qam", "fql", effects=[qam.mean() - fql.mean(), 1.0], seeds=[12], sims=1000)
    assert plan.observed == pytest.approx(qam.mean() - fql.mean())
    gap, one_point = plan.table["power"]
    assert gap > 0.99 and one_point < 0.5
    assert plan.needed[1.0] is None or plan.needed[1.0] > 12
    assert plan.needed[plan.observed] <= 3


def test_power_grows_with_seeds_and_effect_and_the_iqm_and_published_cases_answer():
    plan = analysis.seeds_needed(
        "qam", "qam-edit", tasks=[f"cube-double-play-singletask-task{i}-v0" for i in range(1, 6)],
        effects=[2, 5, 10], seeds=[2, 4, 8], aggregate="iqm", published=True, sims=1000,
    )  # fmt: skip
    power = plan.table.pivot(index="seeds", columns="effect", values="power").to_numpy()
    assert (np.diff(power, axis=0) >= -0.02).all() and (np.diff(power, axis=1) >= 0).all()
    assert power[0, 0] < power[-1, -1] and plan.domains == ["cube-double-play"]
    needed = [plan.needed[e] or 101 for e in (2.0, 5.0, 10.0)]
    assert needed == sorted(needed, reverse=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["qam", "qamm"], "not in the published reference: qamm"),
        (["qam", "fql", "--tasks", "cube-single-play"], "no released results for 5 task(s)"),
        (["qam", "fql", "--effects", "2,x"], "--effects expects positive floats"),
        (["qam", "fql", "--seeds", "0"], "--seeds expects positive ints"),
        (["qam", "fql", "--power", "1.5"], "bad power 1.5"),
        (["qam", "qam"], "two different methods"),
        (["qam", "fql", "--tasks", "scene-play", "--n-tasks", "6"], "a plan of 6 tasks, but only 5"),
    ],
)
def test_bad_input_is_one_message_and_exit_code_2(capsys, argv, message):
    assert main(["plan-seeds", *argv, "--sims", "100"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_plan_seeds_prints_power_and_the_dry_runs_gpu_hours(capsys):
    argv = ["plan-seeds", "qam", "fql", "--tasks", "puzzle-3x3-play", "--seeds", "3,12", "--effects", "5,50"]
    assert main([*argv, "--sims", "500", "--steps-per-second", "500"]) == 0
    out = capsys.readouterr().out
    # 2 methods x 5 tasks x 3 seeds x 1,000,000 offline steps / 500 steps/s / 3600 s = 16.7 hours
    assert "mean success over 5 tasks (1 domain)" in out
    rows = {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()[:2] in ("3 ", "12")
    }
    assert rows["3"][-1] == "17" and rows["12"][-1] == "67"
    assert rows["12"][1] == "1.00"  # a 50-point gap on five tasks
    assert "seeds per task for 80% power over 5 tasks:" in out
    argv = ["plan-seeds", "qam", "fql", "--tasks", "puzzle-3x3-play", "--n-tasks", "2", "--seeds", "3"]
    assert main([*argv, "--sims", "200", "--steps-per-second", "500"]) == 0
    out = capsys.readouterr().out
    assert "mean success over 2 tasks drawn from 5 tasks" in out
    assert out.splitlines()[5].split()[-1] == "7"  # 2 x 2 x 3 x 1,000,000 / 500 / 3600 = 6.7 hours
