"""QGF: guided sampling against analytic velocities and critics, the estimators' gradients, the
IQL value's expectile, and the one-Adam update against the reference's three Adams."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_fql import bandit_buffer

from algorithms import registry
from algorithms.base import Batch, EnvSpec
from algorithms.critic import EnsembleCritic
from algorithms.flow import sample_actions
from algorithms.nets import EmbeddedTimeVelocityField, NormFirstMLP, VelocityField
from algorithms.qgf import ESTIMATORS, expectile_loss, guidance_gradient, guided_sample
from algorithms.registry import RegistryError

TINY = {"hidden_dims": (64, 64), "batch_size": 32}
MAXIMISER = torch.tensor([0.6, -0.4])
STATE = np.array([0.3, -0.7], np.float32)


pytestmark = pytest.mark.usefixtures("one_thread")


CHUNKED = EnvSpec(3, 2, horizon=2)


def tiny_qgf(spec: EnvSpec = CHUNKED, seed=0, **overrides):
    return registry.create("qgf", spec, registry.make_config("qgf", {**TINY, **overrides}), seed=seed)


def gaussian_velocity(mean: torch.Tensor, std: float):
    """The exact flow-matching velocity E[x_1 - x_0 | x_t = x] of data N(mean, std^2 I)."""

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        var = (1 - t) ** 2 + t**2 * std**2
        centred = x - t * mean
        return mean + (t * std**2 - (1 - t)) / var * centred

    return velocity


def quadratic_critic(a: torch.Tensor) -> torch.Tensor:
    """Q(a) = -||a - a*||^2, maximised at MAXIMISER."""
    return -(a - MAXIMISER).pow(2).sum(-1)


# --- weight 0 is plain behaviour cloning --------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_zero_weight_equals_plain_bc_sampling_for_the_same_noise(estimator):
    agent = tiny_qgf(estimator=estimator)
    obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    state = agent.act_generator.get_state()
    guided = agent.act(obs, guidance_weight=0.0)
    agent.act_generator.set_state(state)
    noise = agent.randn(64, agent.spec.chunk_dim, generator=agent.act_generator)
    with torch.no_grad():
        plain = sample_actions(agent.flow, obs, noise, agent.config.flow_steps)
    assert torch.equal(guided, plain)  # bit for bit
    agent.act_generator.set_state(state)
    assert (agent.act(obs, guidance_weight=0.05) - plain).abs().max() > 1e-4  # a weight does act


# --- guidance moves toward the critic's maximiser -------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_guided_actions_approach_a_known_maximiser_as_the_weight_grows(estimator):
    velocity = gaussian_velocity(torch.tensor([-0.3, 0.2]), std=0.3)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    weights = [0.0, 0.004, 0.02, 0.1, 0.5, 2.0]
    distances = []
    for weight in weights:
        actions = guided_sample(velocity, quadratic_critic, noise, weight, steps=10, estimator=estimator)
        distances.append((actions - MAXIMISER).norm(dim=-1).mean().item())
    assert all(near < far for far, near in zip(distances, distances[1:])), distances
    assert distances[0] > 0.9  # the behaviour flow's samples sit around (-0.3, 0.2)
    assert distances[-1] < 0.5 * distances[0], distances


def test_all_estimators_agree_on_the_sampled_distribution_without_guidance():
    velocity = gaussian_velocity(torch.tensor([0.2, -0.1]), std=0.2)
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(3))
    samples = [guided_sample(velocity, quadratic_critic, noise, 0.0, 100, e) for e in ESTIMATORS]
    for other in samples[1:]:
        assert torch.equal(samples[0], other)
    torch.testing.assert_close(samples[0].mean(0), torch.tensor([0.2, -0.1]), atol=0.02, rtol=0)
    torch.testing.assert_close(samples[0].std(0), torch.tensor([0.2, 0.2]), atol=0.02, rtol=0)


# --- the estimators' gradients --------------------------------------------------------------------
def float64_nets(obs_dim: int = 3, action_dim: int = 4):
    torch.manual_seed(0)
    flow = VelocityField(obs_dim, action_dim, (32, 32)).double()
    critic = EnsembleCritic(obs_dim, action_dim, (32, 32), 2).double()
    obs = torch.randn(16, obs_dim, dtype=torch.float64)

    def velocity(x, t):
        return flow(obs, x, t)

    def q_min(a):
        return critic(obs, a).min(-2).values

    return velocity, q_min, critic, obs


def central_differences(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """d f_i / d x_ij for a per-sample function f (*B, D) -> (*B,)."""
    grad = torch.zeros_like(x)
    for j in range(x.shape[-1]):
        step = torch.zeros_like(x)
        step[..., j] = eps
        grad[..., j] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("t", [0.0, 0.4, 0.9])
def test_jacobian_estimator_matches_finite_differences(t):
    velocity, q_min, critic, obs = float64_nets()
    x = 0.3 * torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pre_clip = x + (1 - t) * velocity(x, t)
        members = critic(obs, pre_clip.clamp(-1, 1))
    assert pre_clip.abs().max() < 0.99  # away from the clip's kinks
    assert (members[0] - members[1]).abs().min() > 1e-4  # and from the min's

    def through_a_hat(x_):
        return q_min((x_ + (1 - t) * velocity(x_, t)).clamp(-1, 1))

    v, grad = guidance_gradient(velocity, q_min, x, t, "jacobian")
    expected = central_differences(through_a_hat, x)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(v, velocity(x, t).detach())

    _, standard = guidance_gradient(velocity, q_min, x, t, "standard")
    torch.testing.assert_close(standard, central_differences(q_min, pre_clip), rtol=1e-6, atol=1e-9)
    assert (standard - grad).abs().max() > 1e-3  # the Jacobian term is not negligible here
    _, noisy = guidance_gradient(velocity, q_min, x, t, "noisy")
    torch.testing.assert_close(noisy, central_differences(q_min, x), rtol=1e-6, atol=1e-9)


def test_guidance_gradient_works_without_grad_mode_and_leaves_parameters_alone():
    velocity, q_min, critic, _ = float64_nets()
    x = 0.3 * torch.randn(16, 4, dtype=torch.float64)
    with torch.no_grad():
        for estimator in ESTIMATORS:
            v, grad = guidance_gradient(velocity, q_min, x, 0.5, estimator)
            assert not v.requires_grad and not grad.requires_grad
            assert grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


# --- the IQL value: an expectile of Q over dataset actions -----------------------------------------
def expectile_of(q: torch.Tensor, e: float) -> float:
    """The e-expectile of a sample: the root of e E[(q - v)+] = (1 - e) E[(v - q)+] (bisection)."""
    lo, hi = q.min().item(), q.max().item()
    for _ in range(60):
        v = (lo + hi) / 2
        excess = e * (q - v).clamp(min=0).sum() - (1 - e) * (v - q).clamp(min=0).sum()
        lo, hi = (v, hi) if excess > 0 else (lo, v)
    return (lo + hi) / 2


def test_expectile_loss_minimiser_runs_from_the_mean_toward_the_max():
    q = torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) ** 3
    minimisers = []
    for e in (0.5, 0.7, 0.9, 0.99):
        v = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([v], lr=1, max_iter=100, line_search_fn="strong_wolfe")

        def closure(v=v, e=e, optimizer=optimizer):
            optimizer.zero_grad()
            loss = expectile_loss(q - v, e).mean()
            loss.backward()
            return loss

        optimizer.step(closure)
        minimisers.append(v.item())
        assert minimisers[-1] == pytest.approx(expectile_of(q, e), abs=1e-6)
    assert minimisers[0] == pytest.approx(q.mean().item(), abs=1e-6)
    assert all(a < b for a, b in zip(minimisers, minimisers[1:]))
    assert minimisers[-1] < q.max().item()


def test_value_network_learns_the_expectile_of_q_over_dataset_actions():
    buffer = bandit_buffer(2000, state=STATE)
    dataset_actions = buffer.storage["actions"][: buffer.size]
    obs = torch.from_numpy(STATE)[None]
    values, means = [], []
    for e in (0.5, 0.7, 0.9, 0.99):
        overrides = {"batch_size": 64, "lr": 1e-3, "target_tau": 0.05, "expectile": e}
        agent = tiny_qgf(EnvSpec(2, 2, horizon=1), **overrides)
        for _ in range(300):
            agent.update(buffer.sample(64))
        with torch.no_grad():
            q = agent.target_critic(obs.expand(len(dataset_actions), 2), dataset_actions).min(-2).values
            value = agent.state_value(obs).item()
        mean, top = q.mean().item(), q.max().item()
        assert abs(value - expectile_of(q, e)) < 0.15 * (top - mean), (e, value, expectile_of(q, e))
        if e > 0.5:
            assert mean < value < top, (e, mean, value, top)
        values.append(value)
        means.append(mean)
    assert abs(values[0] - means[0]) < 0.15 * (top - mean)  # expectile 0.5: the mean
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert means[0] == pytest.approx(-1.02, abs=0.1)  # the critic learned r: E_a[-||a - a*||^2]


# --- the update ---------------------------------------------------------------------------------
def test_one_adam_over_the_summed_loss_equals_three_separate_adams():
    """The reference trains Q, V and the flow with three Adams (no clipping); we use one Adam
    over the summed loss. Identical, because no loss reaches another network's parameters."""
    buffer = bandit_buffer(500, state=STATE)
    agent = tiny_qgf(EnvSpec(2, 2, horizon=1), target_tau=0.1)
    for _ in range(3):  # non-trivial Adam moments and targets
        agent.update(buffer.sample(32))
    reference = copy.deepcopy(agent)
    networks = {"critic_loss": reference.critic, "value_loss": reference.value, "bc_loss": reference.flow}
    adams = {}
    for name, net in networks.items():
        adams[name] = torch.optim.Adam(net.parameters(), lr=reference.config.lr)
        params = list(net.parameters())
        adams[name].load_state_dict(_sub_state(reference.optimizer, reference._trainable(), params))

    batches = [buffer.sample(32) for _ in range(3)]
    for batch in batches:
        agent.update(batch)

        _, metrics = reference.loss(batch)
        grads = {}
        for name, net in networks.items():
            every = reference._trainable()
            all_grads = torch.autograd.grad(metrics[name], every, allow_unused=True, retain_graph=True)
            own = {id(p) for p in net.parameters()}
            for p, g in zip(every, all_grads):
                if id(p) not in own:
                    assert g is None or not g.any(), f"{name} reaches a parameter outside its network"
            grads[name] = [g for p, g in zip(every, all_grads) if id(p) in own]
        with torch.no_grad():  # Polyak from the pre-update parameters, as the base update
            for target, online in zip(reference.target_critic.parameters(), reference.critic.parameters()):
                target.lerp_(online, reference.target_tau)
        for name, net in networks.items():
            for p, g in zip(net.parameters(), grads[name]):
                p.grad = g
            adams[name].step()
            adams[name].zero_grad(set_to_none=True)

        for (name, got), expected in zip(agent.named_parameters(), reference.parameters()):
            assert torch.equal(got, expected), name
        for got, expected in zip(agent.target_critic.parameters(), reference.target_critic.parameters()):
            assert torch.equal(got, expected)


def _sub_state(optimizer: torch.optim.Optimizer, all_params: list, params: list) -> dict:
    """The state of `optimizer` restricted to `params`, as a state dict for an Adam over them."""
    full = optimizer.state_dict()
    index = {id(p): i for i, p in enumerate(all_params)}
    group = {k: v for k, v in full["param_groups"][0].items() if k != "params"}
    state = {j: copy.deepcopy(full["state"][index[id(p)]]) for j, p in enumerate(params)}
    return {"state": state, "param_groups": [{**group, "params": list(range(len(params)))}]}


def random_chunk_batch(b: int = 32, horizon: int = 2, generator=None) -> Batch:
    """Chunks of CHUNKED's shapes with some episode ends inside (valid 0) and some masks 0."""
    g = generator or torch.Generator().manual_seed(0)
    valid = (torch.rand(b, horizon, generator=g) > 0.3).float().cummin(-1).values
    return Batch(
        observations=torch.randn(b, 3, generator=g),
        actions=torch.rand(b, horizon, 2, generator=g) * 2 - 1,
        rewards=-torch.rand(b, horizon, generator=g),
        masks=(torch.rand(b, horizon, generator=g) > 0.2).float(),
        valid=valid,
        terminals=1 - valid,
        next_observations=torch.randn(b, horizon, 3, generator=g),
    )


def test_losses_follow_the_equations():
    agent = tiny_qgf(target_tau=0.5)
    for seed in range(3):  # online and target critics now differ, and so do the two Qs
        agent.update(random_chunk_batch(generator=torch.Generator().manual_seed(seed)))
    batch = random_chunk_batch(generator=torch.Generator().manual_seed(9))
    _, metrics = agent.loss(batch)

    obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[:, -1]
    with torch.no_grad():
        y = (
            batch.rewards[:, -1]
            + 0.99**2 * batch.masks[:, -1] * agent.value(batch.next_observations[:, -1])[:, 0]
        )
        q1, q2 = agent.critic(obs, actions)
        t1, t2 = agent.target_critic(obs, actions)
        v = agent.value(obs)[:, 0]
    assert (t1 - t2).abs().min() > 0 and (t1 - q1).abs().min() > 0
    critic = (valid * (q1 - y) ** 2).mean() + (valid * (q2 - y) ** 2).mean()
    u = torch.minimum(t1, t2) - v
    value = (valid * torch.where(u < 0, 0.1, 0.9) * u**2).mean()
    torch.testing.assert_close(metrics["critic_loss"].detach(), critic)
    torch.testing.assert_close(metrics["value_loss"].detach(), value)
    assert 0 < valid.sum() < len(valid)  # the batch has invalid chunks to weight away


def test_losses_reach_only_their_own_networks_and_targets_do_not_train():
    buffer = bandit_buffer(200, state=STATE)
    agent = tiny_qgf(EnvSpec(2, 2, horizon=1))
    metrics = agent.update(buffer.sample(32))
    assert {"critic_loss", "value_loss", "bc_loss", "q_data", "v_data", "loss"} <= set(metrics)
    assert all(not p.requires_grad for p in agent.target_critic.parameters())
    assert len(agent._trainable()) == sum(
        len(list(m.parameters())) for m in (agent.critic, agent.value, agent.flow)
    )


# --- the agent ----------------------------------------------------------------------------------
def test_act_with_stacked_seeds_in_range_and_under_no_grad():
    agent = tiny_qgf(EnvSpec(3, 2, horizon=4), seed=[0, 1, 2], estimator="jacobian")
    obs = 10 * torch.randn(3, 5, 3)
    with torch.no_grad():
        actions = agent.act(obs, guidance_weight=0.5)
    assert actions.shape == (3, 5, 8) and actions.abs().max() <= 1.0
    assert not actions.requires_grad
    assert all(p.grad is None for p in agent.parameters())
    assert not torch.equal(actions[0], actions[1])  # the seeds hold different networks


def test_stacked_seeds_update_per_seed():
    buffer = bandit_buffer(300, state=STATE)
    agent = tiny_qgf(EnvSpec(2, 2, horizon=1), seed=[0, 1])
    metrics = agent.update(buffer.sample(32, stack=(2,)))
    assert all(isinstance(v, list) and len(v) == 2 for v in metrics.values())


def test_bad_estimator_is_a_clear_error():
    with pytest.raises(RegistryError, match="standard, noisy, jacobian.*'exact'"):
        registry.make_config("qgf", {"estimator": "exact"})
    with pytest.raises(RegistryError, match="expectile"):
        registry.make_config("qgf", {"expectile": 1.5})
    assert registry.get("qgf").cls.eval_params == {"guidance_weight": 0.02}


def test_qgf_paper_actor_switches():
    torch.manual_seed(0)
    plain = VelocityField(3, 4, (16, 16))
    torch.manual_seed(0)
    same = EmbeddedTimeVelocityField(3, 4, (16, 16))
    obs, x, t = torch.randn(5, 3), torch.randn(5, 4), torch.rand(5, 1)
    assert torch.equal(plain(obs, x, t), same(obs, x, t))  # both switches off: VelocityField

    mlp = NormFirstMLP(3, 2, (8,))
    h = mlp.linears[0](obs)
    h = torch.nn.functional.gelu(torch.nn.functional.layer_norm(h, (8,), eps=1e-6), approximate="tanh")
    torch.testing.assert_close(mlp(obs), mlp.linears[1](h))  # Linear -> LayerNorm -> GELU

    agent = tiny_qgf(actor_layer_norm=True, time_embedding_dim=16)
    assert agent.flow.net.linears[0].weight.shape[0] == 3 + 4 + 16
    assert agent.act(torch.randn(4, 3)).shape == (4, 4)
    with pytest.raises(RegistryError, match="time_embedding_dim"):
        registry.make_config("qgf", {"time_embedding_dim": 7})
