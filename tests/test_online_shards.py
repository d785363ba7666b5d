"""100M (sharded) datasets in both phases: the shard of each step (the QAM reference's rotation,
counted from the switch in the online phase), the swap of a buffer's dataset part that keeps the
online transitions, and a run stopped after online rotations resuming to the same records."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TASK, run_args

from harness.cli import main
from harness.datagen import generate
from harness.run import envs, online_phase, shards, train, trainer
from harness.run.data import ReplayBuffer
from harness.run.online import Explorer
from harness.run.shards import OfflineData, swap_offline
from harness.run.sources.ogbench_source import load_transitions

SHARD_DIR = "cube-double-play-100m-v0"
# Three shards of 50, 60 and 60 transitions: online swaps both of one size and of another.
SHARD_EPISODES = [(1, 50), (2, 30), (2, 30)]
ROTATION, OFFLINE, ONLINE = 5, 7, 14
# Step -> shard: offline (s // 5) % 3; online (7 // 5 + (s - 7) // 5) % 3, counted from the switch.
EXPECTED_SHARDS = [0] * 4 + [1] * 3 + [1] * 4 + [2] * 5 + [0] * 5
FLAGS = dict(steps=OFFLINE, online_steps=ONLINE, online_warmup_steps=1, eval_interval=7, eval_episodes=1)
RUN_DIR = Path("default/fql") / TASK / "seed0"
SUITE = f"""
name = "shards"
base = "smoke"
tasks = [{{ task = "{TASK}", shard_dir = "{SHARD_DIR}" }}]
"""


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset directory holding three shards of generated cube-double data, and shards.toml, a
    suite whose cube-double task reads them."""
    root = tmp_path_factory.mktemp("shards")
    (root / SHARD_DIR).mkdir()
    for index, (episodes, length) in enumerate(SHARD_EPISODES):
        made, _ = generate(
            "cube-double-v0",
            episodes,
            root / f"made{index}",
            episode_length=length,
            seed=index,
            progress=False,
        )
        shutil.move(made, root / SHARD_DIR / f"{SHARD_DIR}-{index:03d}.npz")
    (root / "shards.toml").write_text(SUITE)
    return root


def patch_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotate every 5 steps; episodes of 10 steps (training, evaluation and online environments)."""
    monkeypatch.setattr(shards, "SHARD_ROTATION_STEPS", ROTATION)
    short = functools.partial(envs.make_env, max_episode_steps=10)
    monkeypatch.setattr(trainer, "make_env", short)
    monkeypatch.setattr(online_phase, "make_env", short)


def sharded_run(shard_root: Path, out: Path) -> int:
    """`flowarena run` of fql on the shards (patched by `patch_run`)."""
    return main([*run_args(shard_root, out, **FLAGS), "--suite", str(shard_root / "shards.toml")])


@pytest.fixture(scope="module")
def whole_run(shard_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """An uninterrupted run, and what every rotation left in the buffer: the step, its shard,
    and for each online swap whether the online transitions and the new shard's rows are there."""
    seen: list[dict] = []
    original = trainer.Trainer.rotate_shard

    def spy(self: trainer.Trainer) -> None:
        online, before_shard = self.step > OFFLINE, self.data.current
        before = self.buffer.online_part() if online else None
        original(self)
        event = {"step": self.step, "shard": self.data.current}
        if online and self.data.current != before_shard:
            after = self.buffer.online_part()
            shard = load_transitions(self.data.files[self.data.current], TASK, self.env, sparse=False)
            n = self.buffer.offline_size
            event["online_kept"] = all(torch.equal(after[key], before[key]) for key in before)
            event["online_count"] = len(after["actions"])
            event["dataset_rows"] = n == len(shard["observations"]) and torch.equal(
                self.buffer.read("actions", 0, n), torch.as_tensor(shard["actions"])
            )
        seen.append(event)

    out = tmp_path_factory.mktemp("shard-run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        patch_run(monkeypatch)
        monkeypatch.setattr(trainer.Trainer, "rotate_shard", spy)
        assert sharded_run(shard_root, out) == 0
    return out / RUN_DIR, seen


def records(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_parquet(run_dir / f"{name}.parquet").drop(columns=["wall_time_s"])
        for name in ("evals", "train")
    }


def test_shard_of_each_step_follows_the_reference_in_both_phases(shard_root):
    data = OfflineData(TASK, shard_root, None, sparse=False, shard_dir=SHARD_DIR, rotation_steps=ROTATION)
    steps = range(1, OFFLINE + ONLINE + 1)
    assert [data.shard_for_step(step, OFFLINE) for step in steps] == EXPECTED_SHARDS
    # With a switch on a multiple of the interval (the paper's 1M) the count never restarts.
    assert [data.shard_for_step(s, 10) for s in range(1, 31)] == [(s // ROTATION) % 3 for s in range(1, 31)]
    assert OfflineData(TASK, shard_root, None, sparse=False, shard_dir=SHARD_DIR).rotation_steps == 1000


def fake_data(n: int, value: float) -> dict[str, np.ndarray]:
    terminals = (np.arange(n) % 4 == 3).astype(np.float32)
    return {
        "observations": np.full((n, 3), value, np.float32) + np.arange(n)[:, None],
        "actions": np.full((n, 2), value / 100, np.float32),
        "rewards": np.full(n, value, np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": terminals,
        "next_observations": np.full((n, 3), value, np.float32) + np.arange(1, n + 1)[:, None],
    }


@pytest.mark.parametrize("new_size", [8, 5, 12])
def test_swap_replaces_the_dataset_rows_and_keeps_each_members_online_rows(new_size):
    buffer = ReplayBuffer(fake_data(8, 0.0), horizon=2, discount=0.9, seed=[0, 1], capacity=8 + 6)
    for member, count in ((0, 3), (1, 5)):
        for k in range(count):
            row = {key: values[k] for key, values in fake_data(6, 50.0 + 10 * member).items()}
            buffer.member(member).add(**row)
    before = [buffer.online_part(member) for member in (0, 1)]
    moved = swap_offline(buffer, fake_data(new_size, 7.0))
    assert moved == new_size - 8 and buffer.offline_size == new_size
    assert buffer.sizes == [new_size + 3, new_size + 5] and buffer.online_capacity == 6
    for member in (0, 1):
        assert torch.equal(
            buffer.read("observations", 0, new_size, member),
            torch.as_tensor(fake_data(new_size, 7.0)["observations"]),
        )
        after = buffer.online_part(member)
        assert all(torch.equal(after[key], before[member][key]) for key in before[member])
    batch = buffer.sample(64, stack=(2,))  # every chunk from the member's own rows
    assert set(batch.rewards[1, :, 0].tolist()) <= {7.0, 60.0}


def test_online_phase_rotates_shards_and_keeps_the_online_transitions(whole_run):
    run_dir, seen = whole_run
    assert [event["shard"] for event in seen] == EXPECTED_SHARDS
    swaps = [event for event in seen if "online_kept" in event]
    assert [event["step"] for event in swaps] == [12, 17]  # 1 -> 2 (60 -> 60 rows), 2 -> 0 (60 -> 50)
    for event in swaps:
        assert event["online_kept"] and event["dataset_rows"]
        assert event["online_count"] == event["step"] - 1 - OFFLINE  # every transition so far
    train_rows = records(run_dir)["train"]
    online = train_rows[train_rows["phase"] == "online"]
    sizes = {0: 50, 1: 60, 2: 60}
    expected = [sizes[EXPECTED_SHARDS[s - 1]] + s - OFFLINE for s in online["step"]]
    assert online["buffer_size"].tolist() == expected


def test_a_run_stopped_after_online_rotations_resumes_to_the_same_records(
    whole_run, shard_root, tmp_path, monkeypatch
):
    patch_run(monkeypatch)
    original_step = Explorer.step
    for stop_at, shard in ((14, 2), (18, 0)):  # in shard 2 (60 rows), then after the move to shard 0 (50)

        def step_then_stop(self: Explorer, stop_at: int = stop_at) -> None:
            original_step(self)
            if self.buffer.size - self.buffer.offline_size == stop_at - OFFLINE:
                train.request_stop()

        monkeypatch.setattr(Explorer, "step", step_then_stop)
        try:
            assert sharded_run(shard_root, tmp_path) == 1
        finally:
            train.clear_stop()
        checkpoint = torch.load(tmp_path / RUN_DIR / "ckpt.pt", weights_only=True)
        assert (checkpoint["step"], checkpoint["shard"]) == (stop_at, shard)
    monkeypatch.setattr(Explorer, "step", original_step)
    assert sharded_run(shard_root, tmp_path) == 0
    resumed, whole = records(tmp_path / RUN_DIR), records(whole_run[0])
    for name in ("evals", "train"):
        pd.testing.assert_frame_equal(resumed[name], whole[name])
