"""The generic update of the Agent base class: Polyak targets, clipping, checkpoints."""

import copy

import torch
from test_fql import bandit_buffer

from algorithms import registry
from algorithms.base import EnvSpec, clip_grad_norm_stacked


def tiny_fql(seed=0, **overrides):
    config = registry.make_config(
        "fql", {"hidden_dims": (16,), "num_critics": 2, "batch_size": 8, **overrides}
    )
    return registry.create("fql", EnvSpec(2, 2, horizon=1), config, seed=seed)


def test_targets_start_as_copies_and_follow_pre_update_parameters():
    agent = tiny_fql(target_tau=0.1)
    for target, online in zip(agent.target_critic.parameters(), agent.critic.parameters()):
        assert torch.equal(target, online)
    before_online = [p.detach().clone() for p in agent.critic.parameters()]
    before_target = [p.detach().clone() for p in agent.target_critic.parameters()]
    agent.update(bandit_buffer(100).sample(8))
    for target, old_online, old_target, new_online in zip(
        agent.target_critic.parameters(), before_online, before_target, agent.critic.parameters()
    ):
        torch.testing.assert_close(target, 0.1 * old_online + 0.9 * old_target)
        assert not torch.equal(new_online, old_online)


def test_stacked_clipping_equals_per_seed_clipping():
    torch.manual_seed(0)
    stacked = [torch.nn.Parameter(torch.randn(3, 4, 5)), torch.nn.Parameter(torch.randn(3, 1, 5))]
    for p in stacked:
        p.grad = torch.randn_like(p) * torch.tensor([0.1, 1.0, 10.0]).reshape(3, 1, 1)
    per_seed = []
    for s in range(3):
        params = [torch.nn.Parameter(p[s].detach().clone()) for p in stacked]
        for p, q in zip(params, stacked):
            p.grad = q.grad[s].clone()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        per_seed.append((norm, [p.grad for p in params]))
    norms = clip_grad_norm_stacked(stacked, 1.0, stack_ndim=1)
    for s, (norm, grads) in enumerate(per_seed):
        torch.testing.assert_close(norms[s], norm)
        for p, g in zip(stacked, grads):
            torch.testing.assert_close(p.grad[s], g, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_continues_identically():
    buffer = bandit_buffer(300)
    agent = tiny_fql(seed=4)
    for _ in range(5):
        agent.update(buffer.sample(8))
    state = copy.deepcopy(agent.state_dict())  # state_dict holds live references
    buffer_state = copy.deepcopy(buffer.state_dict())
    expected = [agent.update(buffer.sample(8)) for _ in range(3)]
    restored = tiny_fql(seed=123)
    restored.load_state_dict(state)
    buffer.load_state_dict(buffer_state)
    got = [restored.update(buffer.sample(8)) for _ in range(3)]
    assert got == expected


def test_stacked_seeds_update_returns_per_seed_metrics():
    config = registry.make_config("fql", {"hidden_dims": (16,), "num_critics": 2, "batch_size": 8})
    agent = registry.create("fql", EnvSpec(2, 2, horizon=1), config, seed=[0, 1, 2])
    metrics = agent.update(bandit_buffer(100).sample(8, stack=(3,)))
    assert all(isinstance(v, list) and len(v) == 3 for v in metrics.values())
    assert agent.act(torch.randn(3, 5, 2)).shape == (3, 5, 2)
