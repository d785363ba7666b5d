"""Balanced sampling (`--balanced-sampling`) and a method's own protocol (RLPD: online only):
each online batch is exactly half offline and half online chunks, drawn within each side's own
range, stacked members draw their lone batches, the warm-up acts at random, and an online-only
rlpd run finishes, resumes to equal records and stacks like its lone seeds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TASK, run_args
from test_online import N_OFFLINE as ONLINE_N_OFFLINE
from test_online import RUN_SEED as ONLINE_SEED
from test_online import SCRIPT, SPEC, RandomChunks, ScriptedEnv, offline_buffer

from harness.args import add_budget_flags, budget_from_args
from harness.cli import main
from harness.run import train
from harness.run.balanced import sample_balanced
from harness.run.data import ReplayBuffer
from harness.run.online import Explorer
from harness.run.spec import method_protocol

N_OFFLINE, HORIZON = 50, 3


def transitions(n: int, marker: float, first_index: int = 0) -> dict[str, np.ndarray]:
    """Observations [marker, buffer index]; single-step episodes would cut chunks, so none end."""
    observations = np.stack([np.full(n, marker), first_index + np.arange(n)], axis=1).astype(np.float32)
    return {
        "observations": observations,
        "actions": observations.copy(),
        "rewards": np.zeros(n, np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": np.zeros(n, np.float32),
        "next_observations": observations,
    }


def buffer_with_online(seed, online: list[int], first_marker: float = 1.0) -> ReplayBuffer:
    """Offline marker 0; member i gets online[i] transitions with marker first_marker + i."""
    buffer = ReplayBuffer(
        transitions(N_OFFLINE, 0.0), horizon=HORIZON, discount=0.9, seed=seed, capacity=N_OFFLINE + 40
    )
    for member, count in enumerate(online):
        data = transitions(count, first_marker + member, N_OFFLINE)
        for i in range(count):
            buffer.add(member, **{key: values[i] for key, values in data.items()})
    return buffer


def test_every_batch_is_exactly_half_offline_and_half_online():
    buffer = buffer_with_online(0, [20])
    batch = sample_balanced(buffer, 16, stack=(3,))
    markers = batch.observations[..., 0]  # (3, 16)
    assert (markers == 0).sum(-1).tolist() == [8, 8, 8] and (markers == 1).sum(-1).tolist() == [8, 8, 8]
    assert (markers[:, :8] == 0).all()  # the offline half first, as the reference concatenates
    # a chunk never mixes the two sides: every step's action carries its start's marker
    assert torch.equal(batch.actions[..., 0], markers.unsqueeze(-1).expand(3, 16, HORIZON))
    odd = sample_balanced(buffer, 7).observations[:, 0]
    assert (odd == 0).sum().item() == 3 and (odd == 1).sum().item() == 4


def test_each_side_is_sampled_over_its_own_whole_range():
    buffer = buffer_with_online(1, [20])
    starts = sample_balanced(buffer, 400).observations  # 200 draws per side, 48 and 18 start indices
    offline = set(starts[starts[:, 0] == 0, 1].int().tolist())
    online = set(starts[starts[:, 0] == 1, 1].int().tolist())
    assert offline == set(range(N_OFFLINE - HORIZON + 1))
    assert online == set(range(N_OFFLINE, N_OFFLINE + 20 - HORIZON + 1))


def test_stacked_members_draw_their_lone_balanced_batches():
    stacked = buffer_with_online([3, 5], [12, 20])
    lone = [buffer_with_online(3, [12]), buffer_with_online(5, [20], first_marker=2.0)]
    for _ in range(2):
        got = sample_balanced(stacked, 10, stack=(2,))
        for index, buffer in enumerate(lone):
            expected = sample_balanced(buffer, 10)
            for a, b in zip(got.tensors(), expected.tensors()):
                assert torch.equal(a[index], b)
    assert (got.observations[1, 5:, 0] == 2).all()  # member 1's online half is its own data
    only_second = sample_balanced(stacked, 10, stack=(1,), members=[1])
    assert torch.equal(only_second.observations[0], sample_balanced(lone[1], 10).observations)


def test_too_few_online_transitions_is_an_error():
    with pytest.raises(RuntimeError, match="needs a chunk of 3 transitions on both sides"):
        sample_balanced(buffer_with_online(0, [2]), 8)


def test_the_warm_up_acts_uniformly_at_random_one_action_per_step():
    """random_steps 5: online steps 1-4 take one random action each, step 5 asks the policy."""
    explorer = Explorer(
        ScriptedEnv(SCRIPT),
        RandomChunks(SPEC),
        offline_buffer(20),
        seed=ONLINE_SEED,
        sparse=False,
        random_steps=5,
    )
    explorer.start()
    for _ in range(4):
        explorer.step()
        assert explorer.queue == []  # a one-action "chunk", used up at once
    assert explorer.agent.chunks == []  # the policy was never asked
    actions = explorer.buffer.storage["actions"][ONLINE_N_OFFLINE : ONLINE_N_OFFLINE + 4]
    assert actions.abs().max() <= 1 and len({tuple(a.tolist()) for a in actions}) == 4
    explorer.step()
    assert len(explorer.agent.chunks) == 1 and len(explorer.queue) == SPEC.horizon - 1


def budget(*flags: str, online_steps: int = 500_000):
    parser = argparse.ArgumentParser()
    add_budget_flags(parser)
    suite = {"offline_steps": 1_000_000, "online_steps": online_steps}
    return budget_from_args(parser.parse_args(list(flags)), suite, method_protocol("rlpd"))


def test_rlpds_protocol_applies_unless_the_user_says_otherwise():
    assert method_protocol("fql") == {}
    paper = budget()
    assert (paper.offline_steps, paper.online_steps, paper.balanced_sampling) == (0, 500_000, True)
    assert budget("--offline-steps", "1000").offline_steps == 1000
    assert budget("--no-balanced-sampling").balanced_sampling is False
    offline_suite = budget(online_steps=0)  # no online phase: trains offline like every method
    assert (offline_suite.offline_steps, offline_suite.balanced_sampling) == (1_000_000, False)


def test_a_sweep_plans_rlpd_online_only(tmp_path, capsys):
    argv = ["sweep", "--name", "p", "--suite", "ogbench", "--methods", "rlpd,fql", "--seeds", "1"]
    argv += ["--tasks", TASK, "--out", str(tmp_path), "--dry-run"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (
        "steps: 2,000,000 (1,000,000 offline + 500,000 online per run (rlpd by its protocol: 0 offline"
        in text
    )


# --- end to end: an online-only rlpd run ------------------------------------------------------
RUN_DIR = Path("default/rlpd") / TASK
FLAGS = dict(
    method="rlpd",
    steps=0,
    online_steps=20,
    online_warmup_steps=6,
    eval_interval=20,
    eval_episodes=1,
    checkpoint_interval=5,
    log_interval=10,
)
DATASET_SIZE = 400  # conftest's dataset


def records(run_dir: Path, kind: str) -> pd.DataFrame:
    return pd.read_parquet(run_dir / f"{kind}.parquet").drop(columns=["wall_time_s"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def whole(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("balanced-whole")
    assert main([*run_args(dataset_dir, out, **FLAGS), "--balanced-sampling"]) == 0
    return out / RUN_DIR / "seed0"


def test_an_online_only_balanced_run_finishes(whole):
    spec = json.loads((whole / "spec.json").read_text())
    assert spec["budget"]["balanced_sampling"] is True and spec["budget"]["offline_steps"] == 0
    evals, train_rows = records(whole, "evals"), records(whole, "train")
    assert evals["step"].tolist() == [20] and (evals["phase"] == "online").all()  # none at step 0
    assert train_rows["step"].tolist() == [10, 20] and train_rows["loss"].notna().all()
    assert (train_rows["buffer_size"] == DATASET_SIZE + train_rows["step"]).all()


def test_a_stopped_balanced_run_resumes_to_equal_records(
    dataset_dir, tmp_path, whole, monkeypatch, one_thread
):
    original = Explorer.step

    def step_then_stop(self: Explorer) -> None:
        original(self)
        if self.buffer.size == DATASET_SIZE + 8:  # after the warm-up, inside a chunk, between checkpoints
            train.request_stop()

    monkeypatch.setattr(Explorer, "step", step_then_stop)
    args = [*run_args(dataset_dir, tmp_path, **FLAGS), "--balanced-sampling"]
    try:
        assert main(args) == 1
    finally:
        train.clear_stop()
    monkeypatch.setattr(Explorer, "step", original)
    assert json.loads((tmp_path / RUN_DIR / "seed0" / "status.json").read_text())["checkpoint_step"] == 8
    assert main(args) == 0
    for kind in ("evals", "train"):
        pd.testing.assert_frame_equal(records(tmp_path / RUN_DIR / "seed0", kind), records(whole, kind))


def test_stacked_seeds_train_like_their_lone_runs(dataset_dir, tmp_path, whole, one_thread):
    args = [*run_args(dataset_dir, tmp_path, **FLAGS), "--balanced-sampling"]
    at = args.index("--seed")
    assert main([*args[:at], "--seeds", "0,1", *args[at + 2 :]]) == 0
    stacked = tmp_path / RUN_DIR / "seed0"
    pd.testing.assert_frame_equal(records(stacked, "train"), records(whole, "train"), rtol=1e-3)
    assert records(tmp_path / RUN_DIR / "seed1", "train")["loss"].notna().all()
