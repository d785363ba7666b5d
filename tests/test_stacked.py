"""Stacked seeds: a stack of S seeds is S lone agents computed together. Every seed has its own
initialisation and random streams, its state slices out as a lone agent's, a NaN in one seed's
slice never reaches another's, and the stacked sampler draws each seed's lone batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support_methods import builtin_methods
from test_fql import bandit_buffer

from algorithms import registry
from algorithms.base import Batch, EnvSpec, GeneratorStack, Metrics, slice_agent_state, stack_agent_states
from harness.run.data import ReplayBuffer
from harness.run.members import DivergenceTracker
from suites.smoke import TINY

SPEC = EnvSpec(2, 2, horizon=1)
METHODS = builtin_methods()


def make(method: str, seed):
    fields = registry.config_fields(method)
    config = registry.make_config(method, {k: v for k, v in TINY.items() if k in fields})
    return registry.create(method, SPEC, config, seed=seed)


def stacked_batch(batches: list[Batch]) -> Batch:
    return Batch(*(torch.stack(tensors) for tensors in zip(*(b.tensors() for b in batches))))


def params(agent, index=None) -> dict[str, torch.Tensor]:
    return {name: p.detach() if index is None else p.detach()[index] for name, p in agent.named_parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_a_stack_trains_like_its_lone_seeds(method):
    if not registry.get(method).cls.supports_seed_stack:
        pytest.skip(f"{method} declares that it does not stack seeds")
    stacked, lone = make(method, [3, 5]), [make(method, 3), make(method, 5)]
    for index, agent in enumerate(lone):  # the same initialisation, exactly
        for name, value in params(agent).items():
            assert torch.equal(params(stacked, index)[name], value), name
    buffers = [bandit_buffer(200, seed=i) for i in range(2)]
    for _ in range(3):
        batches = [buffer.sample(16) for buffer in buffers]
        got = stacked.update(stacked_batch(batches))
        expected = [agent.update(batch) for agent, batch in zip(lone, batches)]
    for index, agent in enumerate(lone):  # the same random streams: equal up to float rounding
        for name, value in params(agent).items():
            torch.testing.assert_close(params(stacked, index)[name], value, rtol=1e-4, atol=1e-5)
        for name in expected[index]:
            assert got[name][index] == pytest.approx(expected[index][name], rel=1e-3, abs=1e-4), name
    obs = torch.randn(2, 7, 2)
    acted = stacked.act(obs)
    for index, agent in enumerate(lone):
        torch.testing.assert_close(acted[index], agent.act(obs[index]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["qam-edit", "fql"])
def test_slices_are_lone_states_and_stack_back(method):
    stacked = make(method, [0, 1, 2])
    stacked.update(bandit_buffer(100).sample(16, stack=(3,)))
    state = stacked.state_dict()
    slices = [slice_agent_state(state, i) for i in range(3)]
    lone = make(method, 7)
    lone.load_state_dict(slices[1])  # a lone agent takes a slice as its own state
    for name, value in params(lone).items():
        assert torch.equal(value, params(stacked, 1)[name])
    assert torch.equal(lone.generator.get_state(), stacked.generator[1].get_state())
    assert torch.equal(lone.act_generator.get_state(), stacked.act_generator[1].get_state())
    again = make(method, [0, 1, 2])
    again.load_state_dict(stack_agent_states(slices))
    batch = bandit_buffer(100, seed=4).sample(16, stack=(3,))
    assert stacked.update(batch) == again.update(batch)


@pytest.mark.parametrize("method", ["qam", "fql", "qgf"])
def test_a_nan_seed_never_reaches_the_other_seeds(method):
    """Seed 1's parameters are NaN: seed 0's update is bit for bit what it is beside a finite
    seed 1 (per-seed losses, gradient clipping, Adam and targets)."""
    clean, poisoned = make(method, [0, 1]), make(method, [0, 1])
    with torch.no_grad():
        for p in poisoned.parameters():
            p[1] = float("nan")
    batch = bandit_buffer(100).sample(16, stack=(2,))
    clean_metrics, poisoned_metrics = clean.update(batch), poisoned.update(batch)
    for name, value in params(poisoned, 0).items():
        assert torch.equal(value, params(clean, 0)[name]), name
    assert all(poisoned_metrics[k][0] == clean_metrics[k][0] for k in clean_metrics)
    assert any(not np.isfinite(v[1]) for v in poisoned_metrics.values())
    obs = torch.randn(2, 5, 2)
    assert torch.equal(poisoned.act(obs)[0], clean.act(obs)[0])


def test_stacked_sampler_draws_each_seeds_lone_batches():
    data = bandit_data()
    stacked = ReplayBuffer(data, horizon=3, discount=0.9, seed=[3, 5])
    lone = [ReplayBuffer(data, horizon=3, discount=0.9, seed=s) for s in (3, 5)]
    for _ in range(2):
        got = stacked.sample(8, stack=(2,))
        for index, buffer in enumerate(lone):
            expected = buffer.sample(8)
            for a, b in zip(got.tensors(), expected.tensors()):
                assert torch.equal(a[index], b)
    only_second = stacked.sample(8, stack=(1,), members=[1])
    assert torch.equal(only_second.observations[0], lone[1].sample(8).observations)


def bandit_data(n: int = 60) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    terminals = np.zeros(n, np.float32)
    terminals[19::20] = 1
    observations = rng.normal(size=(n, 2)).astype(np.float32)
    return {
        "observations": observations,
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": terminals,
        "next_observations": observations + 0.5,
    }


def test_members_keep_their_own_online_transitions():
    data = bandit_data()
    buffer = ReplayBuffer(data, horizon=2, discount=0.9, seed=[0, 1], capacity=len(data["observations"]) + 4)
    lone = ReplayBuffer(data, horizon=2, discount=0.9, seed=1, capacity=len(data["observations"]) + 4)
    for step in range(4):
        for member, value in ((0, 100.0), (1, 200.0)):
            transition = {k: v[step] for k, v in data.items()}
            transition["observations"] = np.full(2, value + step, np.float32)
            buffer.member(member).add(**transition)
            if member == 1:
                lone.add(**transition)
    assert buffer.sizes == [64, 64] and buffer.member(1).size == 64
    part = buffer.member(1).online_part()
    assert torch.equal(part["observations"], lone.online_part()["observations"])
    assert (part["observations"] >= 200).all()
    starts = torch.arange(60, 63)
    for member in (0, 1):
        chunk = buffer.chunks(starts, torch.full((3,), member))
        expected = lone.chunks(starts) if member == 1 else None
        if expected is not None:
            for a, b in zip(chunk.tensors(), expected.tensors()):
                assert torch.equal(a, b)
        assert (chunk.observations[:, 0] >= (100 if member == 0 else 200)).all()
    restored = ReplayBuffer(data, horizon=2, discount=0.9, seed=[0, 1], capacity=64)
    restored.member(1).add_online_part(part)
    assert torch.equal(
        restored.member(1).read("observations", 60, 64), buffer.member(1).read("observations", 60, 64)
    )
    assert restored.member(0).size == 60


def test_generator_stack_states_round_trip():
    stack = GeneratorStack([torch.Generator().manual_seed(s) for s in (1, 2)])
    state = stack.get_state()
    first = torch.rand(2, 3, generator=stack[0])
    stack.set_state(state)
    assert torch.equal(torch.rand(2, 3, generator=stack[0]), first)
    with pytest.raises(ValueError, match="stack of 2"):
        stack.set_state(state[:1])


def test_divergence_tracker_keeps_each_seeds_first_bad_step():
    tracker = DivergenceTracker(3, torch.device("cpu"))
    finite = torch.ones(2, 3)
    tracker.record(1, Metrics(["critic_loss", "loss"], finite))
    assert tracker.check() == {}
    bad = finite.clone()
    bad[1, 2] = float("inf")  # seed 2's loss
    tracker.record(2, Metrics(["critic_loss", "loss"], bad))
    worse = torch.full((2, 3), float("nan"))
    tracker.record(3, Metrics(["critic_loss", "loss"], worse))  # everyone, later
    found = tracker.check()
    assert found[2] == (2, "loss", float("inf"))
    assert found[0][0] == 3 and found[0][1] == "critic_loss"
    tracker.keep([0, 1])
    assert set(tracker.check()) == {0, 1}


def test_metrics_read_the_device_once_and_compare_as_dicts():
    metrics = Metrics(["a", "b"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert metrics == {"a": [1.0, 2.0], "b": [3.0, 4.0]}
    assert list(metrics) == ["a", "b"] and metrics["b"][1] == 4.0
    assert {**metrics}["a"] == [1.0, 2.0]
