"""The chunked sequence sampler against a slow, obviously correct reference."""

import numpy as np
import pytest
import torch

from harness.run.data import ReplayBuffer

HORIZON = 4
DISCOUNT = 0.9


def handmade_episodes() -> dict[str, np.ndarray]:
    """Three episodes of 3, 4 and 5 transitions: every start near an end has the end inside
    its chunk."""
    rng = np.random.default_rng(0)
    lengths = [3, 4, 5]
    n = sum(lengths)
    terminals = np.zeros(n, np.float32)
    terminals[np.cumsum(lengths) - 1] = 1.0
    observations = np.stack([np.arange(n), 100 + np.arange(n)], axis=1).astype(np.float32)
    return {
        "observations": observations,
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "masks": (rng.uniform(size=n) > 0.3).astype(np.float32),
        "terminals": terminals,
        "next_observations": observations + 0.5,
    }


def reference_chunk(data: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
    """Step by step: after the first terminal, steps are invalid, add no reward, keep the mask
    and repeat the last valid step's next observation."""
    out = {k: [] for k in ("rewards", "masks", "valid", "terminals", "next_observations", "actions")}
    reward_sum, mask, ended, last_next = 0.0, 1.0, False, None
    for i in range(HORIZON):
        j = start + i
        if not ended:
            reward_sum += DISCOUNT**i * data["rewards"][j]
            mask = min(mask, data["masks"][j])
            last_next = data["next_observations"][j]
        out["valid"].append(0.0 if ended else 1.0)
        out["rewards"].append(reward_sum)
        out["masks"].append(mask)
        out["next_observations"].append(last_next)
        out["actions"].append(data["actions"][j])
        ended = ended or data["terminals"][j] == 1
        out["terminals"].append(1.0 if ended else 0.0)
    chunk = {k: np.array(v, dtype=np.float32) for k, v in out.items()}
    chunk["observations"] = data["observations"][start]
    return chunk


def test_chunks_match_reference_at_every_start():
    data = handmade_episodes()
    buffer = ReplayBuffer(data, horizon=HORIZON, discount=DISCOUNT)
    n = len(data["observations"])
    starts = torch.arange(n - HORIZON + 1)
    batch = buffer.chunks(starts)
    crossing = 0
    for start in starts.tolist():
        expected = reference_chunk(data, start)
        crossing += int(expected["valid"].min() == 0)
        for name, value in expected.items():
            got = getattr(batch, name)[start].numpy()
            np.testing.assert_allclose(got, value, rtol=1e-6, atol=1e-6, err_msg=f"{name} at start {start}")
    assert crossing >= 4  # the hand-made data really has ends inside chunks


def test_sample_covers_exactly_the_valid_start_range():
    data = handmade_episodes()
    buffer = ReplayBuffer(data, horizon=HORIZON, discount=DISCOUNT, seed=3)
    batch = buffer.sample(4000)
    first_obs = batch.observations[:, 0].long()
    n = len(data["observations"])
    assert set(first_obs.tolist()) == set(range(n - HORIZON + 1))
    assert batch.actions.shape == (4000, HORIZON, 2)
    assert batch.next_observations.shape == (4000, HORIZON, 2)


def test_sample_with_stacked_seeds_and_resumable_generator():
    data = handmade_episodes()
    buffer = ReplayBuffer(data, horizon=HORIZON, discount=DISCOUNT, seed=1)
    state = buffer.state_dict()
    first = buffer.sample(8, stack=(3,))
    assert first.rewards.shape == (3, 8, HORIZON)
    again = ReplayBuffer(data, horizon=HORIZON, discount=DISCOUNT, seed=99)
    again.load_state_dict(state)
    second = again.sample(8, stack=(3,))
    for a, b in zip(first.tensors(), second.tensors()):
        assert torch.equal(a, b)


def test_online_transitions_are_appended_and_sampled():
    data = handmade_episodes()
    n = len(data["observations"])
    buffer = ReplayBuffer(data, horizon=1, discount=DISCOUNT, capacity=n + 2)
    transition = {k: v[0] for k, v in data.items()}
    transition["observations"] = np.array([500.0, 600.0], np.float32)
    buffer.add(**transition)
    buffer.add(**transition)
    assert buffer.size == n + 2
    with pytest.raises(RuntimeError, match="full"):
        buffer.add(**transition)
    batch = buffer.sample(2000)
    assert (batch.observations[:, 0] == 500).any()
