"""`flowarena datagen --dataset-type noisy`: OGBench's noisy manipulation data, its actions the
closed-loop oracle's plus Gaussian noise xi * (1, 1, 1, 3, 10) with xi ~ U(0, 0.1) per episode, or
with probability p_random_action a uniformly random action; play data keeps the oracle's actions."""

from __future__ import annotations

import numpy as np
import pytest

from harness import datagen
from harness.cli import main

ENV = "cube-single-v0"
STEPS = 300


class StillOracle:
    """Stands in for ogbench's oracles: always the zero action, never done, so that a dataset's
    actions are exactly the noise datagen adds to the oracle's."""

    done = False

    def reset(self, ob, info) -> None:
        pass

    def select_action(self, ob, info) -> np.ndarray:
        return np.zeros(5)


def still_actions(tmp_path, monkeypatch, dataset_type: str, **kwargs) -> np.ndarray:
    monkeypatch.setattr(datagen, "_make_oracles", lambda env, how: {"cube": StillOracle()})
    train, _ = datagen.generate(
        ENV, 2, tmp_path, episode_length=STEPS, dataset_type=dataset_type, progress=False, **kwargs
    )
    assert train.name == f"cube-single-{dataset_type}-v0.npz"
    return np.load(train)["actions"].reshape(2, STEPS + 1, 5)


def test_play_data_keeps_the_oracles_actions(tmp_path, monkeypatch):
    assert not still_actions(tmp_path, monkeypatch, "play").any()


def test_noisy_data_adds_gaussian_noise_of_one_level_per_episode_scaled_per_dimension(tmp_path, monkeypatch):
    actions = still_actions(tmp_path, monkeypatch, "noisy", p_random_action=0.0)
    levels = []
    for episode in actions:
        xi = episode[:, :3].std()  # x, y, z: std xi, where xi ~ U(0, 0.1) for the episode
        assert 0 < xi < 0.1 * 1.15 and abs(episode.mean(axis=0)[:3]).max() < 4 * xi / np.sqrt(STEPS)
        assert episode[:, 3].std() / xi == pytest.approx(3, rel=0.2)  # yaw: 3 xi
        assert episode[:, 4].std() / xi > 5  # gripper: 10 xi, clipped to [-1, 1]
        levels.append(xi)
    assert abs(levels[0] - levels[1]) > 0.01 * max(levels)  # a new level each episode
    assert np.abs(actions).max() <= 1


def test_noisy_data_takes_a_uniform_random_action_with_the_given_chance(tmp_path, monkeypatch):
    actions = still_actions(tmp_path, monkeypatch, "noisy", p_random_action=1.0).reshape(-1, 5)
    assert np.abs(actions).max() <= 1 and abs(actions.mean()) < 0.05
    assert actions.std(axis=0) == pytest.approx(np.full(5, 1 / np.sqrt(3)), rel=0.12)
    actions = still_actions(tmp_path, monkeypatch, "noisy", p_random_action=0.3).reshape(-1, 5)
    # a random action leaves |x|, |y| and |z| all under 0.5 with chance 1/8; the noise never passes 0.5
    far = (np.abs(actions[:, :3]) > 0.5).any(axis=1).mean()
    assert far == pytest.approx(0.3 * 7 / 8, abs=0.07)


def test_noisy_datagen_writes_an_ogbench_dataset_the_same_for_a_seed(tmp_path, capsys):
    import ogbench

    for out in ("a", "b"):
        argv = ["datagen", "--env", "cube-double-v0", "--dataset-type", "noisy", "--episodes", "2"]
        assert main([*argv, "--episode-length", "40", "--out", str(tmp_path / out)]) == 0
    first = (tmp_path / "a" / "cube-double-noisy-v0.npz").read_bytes()
    assert first == (tmp_path / "b" / "cube-double-noisy-v0.npz").read_bytes()
    _, train, _ = ogbench.make_env_and_datasets(
        "cube-double-noisy-singletask-task1-v0", dataset_dir=str(tmp_path / "a")
    )
    assert train["observations"].shape[0] == 80 and np.abs(train["actions"]).max() <= 1
    argv = ["datagen", "--env", "cube-double-v0", "--p-random-action", "0.5", "--episodes", "1"]
    assert main([*argv, "--out", str(tmp_path / "c")]) == 2
    assert "--p-random-action must be in [0, 1] with noisy data" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_missing_dataset_says_how_to_get_it_noisy_generated_stitch_downloaded(tmp_path):
    from harness.errors import UserError
    from harness.run.sources.ogbench_source import dataset_files

    messages = {}
    for task in ("cube-double-noisy-singletask-task1-v0", "antmaze-large-stitch-singletask-task1-v0"):
        with pytest.raises(UserError) as error:
            dataset_files(task, tmp_path)
        messages[task.split("-singletask")[0]] = str(error.value)
    assert (
        f"flowarena datagen --env cube-double-v0 --dataset-type noisy --episodes 1000 --out {tmp_path}"
        in (messages["cube-double-noisy"])
    )
    stitch = messages["antmaze-large-stitch"]
    assert (
        "ogbench.download_datasets(['antmaze-large-stitch-v0']" in stitch
        and "flowarena datagen" not in stitch
    )
    assert "stitch data comes from trained navigation policies: only the download has it" in stitch
