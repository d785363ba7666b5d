"""D4RL through Minari: the authors' loader conventions with hand-computed values, the loader on
small Minari datasets made here from the real AntMaze and Adroit environments, the evaluation
environment's success, the missing-dataset message, the `d4rl` suite against the FQL README, and
one run per family through collect, leaderboard and report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("minari")
pytest.importorskip("gymnasium_robotics")

from minari_support import ADROIT_ID, ANTMAZE_ID, PEN_REF_SCORES, make_dataset  # noqa: E402

import suites  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.run.online import online_reward  # noqa: E402
from harness.run.sources import source_for, sources  # noqa: E402
from harness.run.sources.base import ACTION_CLIP  # noqa: E402
from harness.run.sources.minari_source import authors_conventions, dataset_path, open_dataset  # noqa: E402
from suites import d4rl  # noqa: E402

ANTMAZE, PEN = d4rl.task_name(ANTMAZE_ID), d4rl.task_name(ADROIT_ID)


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Minari store with umaze (3 episodes of 20 steps) and pen-human (3 of 20)."""
    root = tmp_path_factory.mktemp("minari")
    make_dataset(root, ANTMAZE_ID)
    make_dataset(root, ADROIT_ID)
    return root


@pytest.fixture
def store(minari_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    return minari_root


def _toy(family: str) -> dict[str, np.ndarray]:
    # 5 transitions; the observation jumps between transitions 1 and 2 (a new episode starts at 2);
    # the dataset says terminated at transition 2
    observations = np.array([[0.0], [1.0], [5.0], [6.0], [7.0]], np.float32)
    next_observations = np.array([[1.0], [2.0], [6.0], [7.0], [8.0]], np.float32)
    actions = np.array([[1.0], [-1.0], [0.5], [0.0], [0.2]], np.float32)
    rewards = np.array([0.0, 1.0, 0.0, 1.0, 0.0], np.float32)
    dataset_terminals = np.array([0, 0, 1, 0, 0], np.float32)
    return authors_conventions(observations, actions, rewards, dataset_terminals, next_observations, family)


def test_antmaze_conventions_by_hand():
    out = _toy(d4rl.ANTMAZE)
    np.testing.assert_array_equal(out["terminals"], [0, 1, 0, 0, 1])  # the jump, and the last
    np.testing.assert_array_equal(out["masks"], [1, 1, 0, 1, 1])
    np.testing.assert_array_equal(out["rewards"], [-1, 0, -1, 0, -1])
    np.testing.assert_array_equal(out["actions"][:, 0], np.float32([ACTION_CLIP, -ACTION_CLIP, 0.5, 0, 0.2]))


def test_adroit_conventions_by_hand():
    out = _toy(d4rl.ADROIT)
    np.testing.assert_array_equal(out["terminals"], [0, 1, 1, 0, 1])  # the jump, terminated, the last
    np.testing.assert_array_equal(out["masks"], [1, 1, 0, 1, 1])
    np.testing.assert_array_equal(out["rewards"], [0, 1, 0, 1, 0])


def test_antmaze_online_rewards_take_the_same_shift():
    assert source_for(ANTMAZE).reward_shift(ANTMAZE) == -1.0 and source_for(PEN).reward_shift(PEN) == 0.0
    assert online_reward(1.0, False, -1.0) == 0.0 and online_reward(0.0, False, -1.0) == -1.0
    assert online_reward(0.7, False) == pytest.approx(0.7)


def test_names_domains_and_sources():
    assert d4rl.task_name("D4RL/antmaze/large-diverse-v1") == "D4RL-antmaze-large-diverse-v1"
    assert d4rl.minari_id("D4RL-pen-human-v2") == "D4RL/pen/human-v2"
    assert suites.domain_of("D4RL/door/cloned-v2") == "door-cloned"
    assert source_for("D4RL/antmaze/umaze-v1").name == "minari"
    assert source_for("cube-double-play-singletask-task1-v0").name == "ogbench"
    assert source_for("D4RL/antmaze/giant-v1").name == "ogbench"  # no such D4RL dataset
    assert [s.name for s in sources()] == ["minari", "ogbench"]  # every *_source module, OGBench last


@pytest.mark.parametrize("dataset_id", [ANTMAZE_ID, ADROIT_ID])
def test_loader_on_made_datasets(store, dataset_id):
    task = d4rl.task_name(dataset_id)
    source = source_for(task)
    env = source.make_env(task)
    [path] = source.locate(task, None, None)
    data = source.load(path, task, env, sparse=False)
    episodes = list(open_dataset(dataset_path(task)).iterate_episodes())
    ends = np.cumsum([len(e.rewards) for e in episodes]) - 1
    assert np.flatnonzero(data["terminals"]).tolist() == ends.tolist()  # found from the observations alone
    raw = np.concatenate([e.rewards for e in episodes]).astype(np.float32)
    shift = -1.0 if dataset_id == ANTMAZE_ID else 0.0
    np.testing.assert_array_equal(data["rewards"], raw + np.float32(shift))
    np.testing.assert_array_equal(data["masks"], 1.0 - np.concatenate([e.terminations for e in episodes]))
    first = episodes[0].observations  # stored as float32 by the loader
    first = {k: np.float32(v) for k, v in first.items()} if isinstance(first, dict) else np.float32(first)
    if dataset_id == ANTMAZE_ID:  # [achieved_goal, observation, desired_goal]: D4RL's 29, then the goal
        assert data["observations"].shape[1] == 2 + 27 + 2
        np.testing.assert_array_equal(data["observations"][0, :2], first["achieved_goal"][0])
        np.testing.assert_array_equal(data["observations"][0, 29:], first["desired_goal"][0])
        np.testing.assert_array_equal(data["next_observations"][0, 2:29], first["observation"][1])
    else:
        np.testing.assert_array_equal(data["observations"][:20], first[:-1])
    assert env.observation_space.shape == data["observations"].shape[1:]


def test_adroit_success_is_the_normalized_return(store):
    import gymnasium

    env = source_for(PEN).make_env(PEN)
    reference = open_dataset(dataset_path(PEN)).recover_environment(eval_env=True)
    actions = np.random.default_rng(3).uniform(-1, 1, (8, 24)).astype(np.float32)
    env.reset(seed=5)
    reference.reset(seed=5)
    total = 0.0
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        total += reference.step(action)[1]
        if terminated or truncated:
            break
    assert truncated and isinstance(reference, gymnasium.Env)  # the recorded spec's 8 steps
    low, high = PEN_REF_SCORES
    assert info["success"] == pytest.approx((total - low) / (high - low), rel=1e-9, abs=1e-12)


def test_antmaze_evaluation_ends_at_the_goal(store):
    env = source_for(ANTMAZE).make_env(ANTMAZE)
    maze = env.env.unwrapped
    assert maze.continuing_task is False  # D4RL's evaluation mazes end an episode at the goal
    observation, _ = env.reset(seed=0)
    goal = maze.maze.cell_rowcol_to_xy(np.array([3, 3]))  # the "g" cell of the recorded eval map
    assert np.linalg.norm(observation[29:] - goal) <= 0.25 * maze.maze.maze_size_scaling + 1e-9


def test_missing_minari_dataset_names_the_download_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    argv = ["run", "--method", "fql", "--task", "D4RL/antmaze/large-diverse-v1", "--suite", "d4rl"]
    assert main([*argv, "--out", str(out), "--offline-steps", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "minari download D4RL/antmaze/large-diverse-v1" in err
    assert not out.exists() and not (tmp_path / "empty").exists()


def test_an_unknown_name_keeps_the_message_for_unknown_tasks(tmp_path, capsys):
    argv = ["run", "--method", "fql", "--task", "D4RL/antmaze/giant-v1", "--out", str(tmp_path / "o")]
    assert main([*argv, "--offline-steps", "10", "--no-progress"]) == 2
    assert "is not in suite 'ogbench' and not an OGBench task" in capsys.readouterr().err


# The FQL README's D4RL commands, transcribed: D4RL name, --agent.alpha, --agent.q_agg (default mean).
FQL_README_COMMANDS = """
antmaze-umaze-v2 10 mean | antmaze-umaze-diverse-v2 10 mean | antmaze-medium-play-v2 10 mean
antmaze-medium-diverse-v2 10 mean | antmaze-large-play-v2 3 mean | antmaze-large-diverse-v2 3 mean
pen-human-v1 10000 min | pen-cloned-v1 10000 min | pen-expert-v1 3000 min
door-human-v1 30000 min | door-cloned-v1 30000 min | door-expert-v1 30000 min
hammer-human-v1 30000 min | hammer-cloned-v1 10000 min | hammer-expert-v1 30000 min
relocate-human-v1 10000 min | relocate-cloned-v1 30000 min | relocate-expert-v1 30000 min
"""


def test_the_d4rl_suite_has_the_fql_readme_settings():
    suite = suites.get_suite("d4rl")
    rows = [r.split() for line in FQL_README_COMMANDS.strip().splitlines() for r in line.split("|")]
    assert len(rows) == len(suite.tasks) == 18
    assert suite.budgets["offline_steps"] == 500_000 and suite.budgets["online_steps"] == 0
    for (name, alpha, q_agg), task in zip(rows, suite.tasks):
        assert name.rsplit("-v", 1)[0] == task.domain
        assert (task.horizon, task.discount, task.sparse) == (1, 0.99, False)
        fql = suite.method_overrides("fql", task.task)
        # two critics: population-std pessimism is the mean at rho 0, the minimum at rho 1
        assert fql == {"rho": {"mean": 0.0, "min": 1.0}[q_agg], "alpha": float(alpha), "num_critics": 2}
        assert suite.method_overrides("qam", task.task) == {"rho": 0.5}
    assert suite.methods_notice("fql", ANTMAZE) is None
    assert "class defaults" in suite.methods_notice("qam", ANTMAZE)


def test_the_d4rl_reference_rows_name_a_source_and_are_never_like_for_like():
    import analysis
    from analysis.records import D4RL_PUBLISHED_FILE

    table = pd.read_csv(Path(analysis.__file__).parent / "data" / D4RL_PUBLISHED_FILE)
    tasks = {t.task for t in suites.get_suite("d4rl").tasks}
    assert set(table["task"]) <= tasks and table["source"].str.startswith("https://").all()
    assert (table["like_for_like"] == "no").all()
    rows = analysis.load_published(["fql"], d4rl=True)
    pen = rows[rows["task"] == PEN]
    assert pen["success"].tolist() == [0.53] and pen["variant"].tolist() == ["fql (published)"]
    assert (analysis.load_published()["reference"] == "qam-paper").all()  # the QAM paper's alone by default


def test_a_toml_suite_sets_the_readme_online_alpha(tmp_path):
    path = tmp_path / "d4rl-online.toml"
    path.write_text(
        'name = "d4rl-online"\nbase = "d4rl"\ntasks = ["D4RL/pen/cloned-v2", "D4RL/antmaze/umaze-v1"]\n'
        "[budgets]\nonline_steps = 1000000\n[methods.fql.pen-cloned]\nalpha = 1000.0\n"
    )
    suite = suites.get_suite(str(path))
    assert suite.task_names == ["D4RL-pen-cloned-v2", ANTMAZE] and suite.budgets["online_steps"] == 1_000_000
    assert suite.method_overrides("fql", "D4RL/pen/cloned-v2") == {
        "rho": 1.0,
        "alpha": 1000.0,
        "num_critics": 2,
    }
    assert suite.task(ANTMAZE).dataset == ANTMAZE_ID


def test_sweep_dry_run_plans_the_18_tasks(tmp_path, capsys):
    argv = ["sweep", "--name", "d", "--suite", "d4rl", "--methods", "fql", "--seeds", "1"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "runs: 18 planned" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", [ANTMAZE, ADROIT_ID])
def test_a_run_per_family_through_collect_leaderboard_and_report(store, tmp_path, capsys, task):
    out = tmp_path / "results"
    argv = ["run", "--method", "fql", "--task", task, "--suite", "d4rl", "--seed", "0", "--sweep", "s"]
    argv += ["--out", str(out), "--offline-steps", "20", "--eval-interval", "10", "--eval-episodes", "2"]
    argv += ["--online-steps", "10", "--online-warmup-steps", "5", "--log-interval", "10"]
    argv += ["--set", "hidden_dims=32,32", "--set", "batch_size=16", "--no-progress"]
    assert main(argv) == 0
    sweep = out / "s"
    evals = pd.read_parquet(next(sweep.glob("*/*/seed0/evals.parquet")))
    assert evals["step"].tolist() == [10, 20, 30] and evals["phase"].tolist() == ["offline"] * 2 + ["online"]
    assert (evals["episode_length"] == 8).all()  # the recorded evaluation spec's episodes
    if task == ANTMAZE:
        assert set(evals["success"]) <= {0.0, 1.0}
    else:  # success is the normalized return of the environment's own return
        low, high = PEN_REF_SCORES
        np.testing.assert_allclose(evals["success"], (evals["return"] - low) / (high - low), rtol=1e-9)
    assert main(["collect", str(sweep)]) == 0
    capsys.readouterr()
    assert main(["leaderboard", str(sweep), "--published", "--reps", "20", "--no-progress"]) == 0
    board = capsys.readouterr().out
    assert d4rl.domain(task) in board
    if task == ADROIT_ID:  # the FQL paper's pen-human cell beside our run, with the comparability note
        assert "fql (published)" in board and "53.0" in board and "NOT like for like" in board
    assert (
        main(["report", str(sweep), "--out", str(tmp_path / "report"), "--reps", "20", "--no-progress"]) == 0
    )
    assert (tmp_path / "report" / "report.md").is_file()
