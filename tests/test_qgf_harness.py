"""QGF in the harness: every suite evaluates the QGF paper's guidance weights by default (one evals
row per weight; a run's own --eval-param replaces the list), and the online phase explores with
QGF's own guidance weight (online_explorative_guidance_weight, 1.0) while evaluations keep the list."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import pytest
import sweep_support  # noqa: F401  (imports submitit early; see there)
from conftest import TASK

import suites
from algorithms import registry
from algorithms.base import Agent, BaseConfig, EnvSpec
from harness.cli import build_parser
from harness.run import envs, online_phase, trainer
from harness.run.online import Explorer
from harness.run.spec import RunSpec, resolve
from harness.sweep.cli import spec_from_args
from harness.sweep.plan import make_plan
from suites import QGF_GUIDANCE_WEIGHTS

QGF = registry.get("qgf").cls
PAPER_GRID = [{"guidance_weight": w} for w in QGF_GUIDANCE_WEIGHTS]
LABELS = [f"guidance_weight={w:g}" for w in QGF_GUIDANCE_WEIGHTS]
SCENE = "scene-play-singletask-task1-v0"  # a task of every built-in suite, ogbench-qgf included


@pytest.fixture
def short_episodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Episodes of 10 steps in the trainer's environment (which is also the one evaluation
    environment when eval_episodes is 1) and in the online phase's."""
    short = functools.partial(envs.make_env, max_episode_steps=10)
    monkeypatch.setattr(trainer, "make_env", short)
    monkeypatch.setattr(online_phase, "make_env", short)


@pytest.mark.parametrize("suite", ["smoke", "ogbench", "ogbench-qgf"])
def test_every_suite_evaluates_qgf_for_the_paper_weights_unless_told_otherwise(suite):
    resolved = resolve(RunSpec("qgf", SCENE, 0, suite=suite))
    assert len(QGF_GUIDANCE_WEIGHTS) == 9 and resolved.spec.eval_params == PAPER_GRID
    assert resolved.record_spec()["eval_params"] == PAPER_GRID  # part of the run's identity
    given = [{"guidance_weight": 0.5}]
    assert resolve(RunSpec("qgf", SCENE, 0, suite=suite, eval_params=given)).spec.eval_params == given
    assert resolve(RunSpec("fql", SCENE, 0, suite=suite)).spec.eval_params == []


def test_a_user_suite_has_the_default_too(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\ntasks = [{ task = "scene-play-singletask-task1-v0", horizon = 5, discount = 0.99, '
        "sparse = true }]\n[budgets]\noffline_steps = 10\nonline_steps = 0\neval_interval = 5\n"
        "eval_episodes = 1\n"
    )
    assert suites.get_suite(path).method_eval_params("qgf") == PAPER_GRID


def test_a_sweep_of_qgf_resolves_to_the_whole_list_and_eval_param_replaces_it(tmp_path):
    argv = ["sweep", "--name", "q", "--suite", "smoke", "--methods", "qgf,fql", "--tasks", TASK]
    argv += ["--seeds", "1", "--out", str(tmp_path)]
    plan = make_plan(spec_from_args(build_parser().parse_args(argv)))
    grids = {run.method: resolve(run.spec).spec.eval_params for run in plan.runs}
    assert grids == {"qgf": PAPER_GRID, "fql": []}
    argv += ["--eval-param", "qgf.guidance_weight=0.02,0.08"]
    plan = make_plan(spec_from_args(build_parser().parse_args(argv)))
    grids = {run.method: resolve(run.spec).spec.eval_params for run in plan.runs}
    assert grids["qgf"] == [{"guidance_weight": 0.02}, {"guidance_weight": 0.08}]


class Declared(Agent):
    """A test-time method that does not say how it explores."""

    name = "declared-eval-params-test"
    eval_params = {"temperature": 0.5}


def test_exploration_params_default_to_the_declared_eval_params():
    agent = Declared(EnvSpec(obs_dim=3, action_dim=2), BaseConfig())
    agent.exploration_params["temperature"] = 9.0  # a copy: the declaration stays
    assert agent.exploration_params == {"temperature": 0.5}  # QGF's own: tests/test_qgf.py


def test_a_qgf_run_evaluates_every_weight_and_explores_with_its_own(
    flowarena, tmp_path, short_episodes, one_thread, monkeypatch
):
    calls: list[tuple[bool, float]] = []  # (acting for the explorer, guidance weight) per chunk
    exploring = [False]
    qgf_act, explorer_act = QGF.act, Explorer.act

    def spy_act(self, obs, **params):
        calls.append((exploring[0], params["guidance_weight"]))
        return qgf_act(self, obs, **params)

    def spy_explorer_act(self):
        exploring[0] = True
        try:
            return explorer_act(self)
        finally:
            exploring[0] = False

    monkeypatch.setattr(QGF, "act", spy_act)
    monkeypatch.setattr(Explorer, "act", spy_explorer_act)
    flags = dict(steps=2, online_steps=6, online_warmup_steps=1, eval_interval=8, eval_episodes=1)
    assert flowarena(tmp_path, method="qgf", **flags) == 0

    explored = [weight for exploring_now, weight in calls if exploring_now]
    evaluated = [weight for exploring_now, weight in calls if not exploring_now]
    assert len(explored) == 2 and set(explored) == {1.0}  # 6 online steps: two chunks of 5
    assert sorted(set(evaluated)) == sorted(QGF_GUIDANCE_WEIGHTS)
    run_dir = Path(tmp_path) / "default" / "qgf" / TASK / "seed0"
    evals = pd.read_parquet(run_dir / "evals.parquet")
    assert evals["step"].tolist() == [2] * 9 + [8] * 9
    assert evals["phase"].tolist() == ["offline"] * 9 + ["online"] * 9
    assert evals["eval_params"].tolist() == LABELS * 2 and (evals["n_episodes"] == 1).all()
    assert json.loads((run_dir / "spec.json").read_text())["eval_params"] == PAPER_GRID
