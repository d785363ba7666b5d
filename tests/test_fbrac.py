"""FBRAC, the backprop-through-time baseline: the Q gradient crosses every Euler step of the ODE."""

import torch
from test_fql import BEST_ACTION, bandit_buffer, true_q
from test_qam import SPEC, grads, random_batch

from algorithms import registry
from algorithms.base import EnvSpec
from algorithms.flow import sample_actions

TINY = {"hidden_dims": (32, 32), "num_critics": 2, "batch_size": 16}


def make(**overrides):
    config = registry.make_config("fbrac", {**TINY, **overrides})
    return registry.create("fbrac", SPEC, config, seed=0)


def test_q_gradient_reaches_the_flow_through_every_euler_step():
    agent = make()
    calls = []

    def hook(_module, args, output):
        calls.append((args[1], output))

    agent.flow.register_forward_hook(hook)
    loss, metrics = agent.loss(random_batch())
    n = agent.config.flow_steps
    # TD next actions (no graph), the BC term, then the differentiated ODE: N calls in graph
    chain = calls[-n:]
    assert len(calls) == 2 * n + 1 and all(out.requires_grad for _, out in chain)
    assert not any(out.requires_grad for _, out in calls[:n])
    states = [x for x, _ in chain[1:]]  # x_1 .. x_{N-1}: each depends on the parameters
    velocities = [out for _, out in chain]  # v(x_k, t_k) for k = 0 .. N-1
    q_grads = torch.autograd.grad(metrics["q_policy"].sum(), states + velocities, retain_graph=True)
    # d Q / d x_k nonzero for every k >= 1: the gradient crossed steps k .. N-1 to get there
    for k, g in enumerate(q_grads):
        assert g.abs().sum() > 0, k

    params = list(agent.flow.parameters())
    total = grads(loss, params)
    without_q = grads(metrics["bc_loss"], params)
    assert any(not torch.allclose(a, b) for a, b in zip(total, without_q))  # the Q term trains the flow
    critic = list(agent.critic.parameters())
    for a, b in zip(grads(loss, critic), grads(metrics["critic_loss"], critic)):
        torch.testing.assert_close(a, b)  # the critic is frozen in the actor term


def test_fbrac_acts_with_the_clipped_ode():
    agent = make()
    obs = 50 * torch.randn(32, SPEC.obs_dim)
    g = torch.Generator().set_state(agent.act_generator.get_state())
    noise = torch.randn(32, SPEC.chunk_dim, generator=g)
    actions = agent.act(obs)
    torch.testing.assert_close(actions, sample_actions(agent.flow, obs, noise, agent.config.flow_steps))
    assert actions.abs().max() <= 1 and not torch.equal(agent.act(obs), actions)


def test_fbrac_no_gradient_clipping_and_targets_of_the_critic_only():
    agent = make()
    assert agent.max_grad_norm is None
    assert [target for target, _ in agent._target_pairs] == [agent.target_critic]


def test_fbrac_policy_moves_to_the_known_optimum():
    """On the FQL bandit (Q = -||a - a*||^2, uniform dataset actions) backprop through the chain
    takes the policy near a*, with a weak BC term (alpha 0.03 scales Q by 33)."""
    buffer = bandit_buffer()
    config = registry.make_config(
        "fbrac", {"hidden_dims": (64, 64), "num_critics": 2, "batch_size": 128, "lr": 1e-3, "alpha": 0.03}
    )
    agent = registry.create("fbrac", EnvSpec(2, 2, horizon=1), config, seed=0)
    test_obs = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    start = true_q(agent.act(test_obs)).mean().item()
    for _ in range(700):
        agent.update(buffer.sample(config.batch_size))
    actions = agent.act(test_obs)
    value = true_q(actions).mean().item()
    distance = (actions - torch.from_numpy(BEST_ACTION)).norm(dim=-1).mean().item()
    assert start < -0.3
    assert value > -0.1, value
    assert distance < 0.3, distance
