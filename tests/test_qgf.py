"""QGF: guided sampling against analytic velocities and critics (closed forms for all three
estimators), the estimators' gradients, the IQL value's expectile, the one-Adam update against the
reference's three Adams, and the QGF reference's protocol pieces (time embedding, grid BC loss,
network layouts, exploration weight)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from test_fql import bandit_buffer

from algorithms import registry
from algorithms.base import Batch, EnvSpec
from algorithms.critic import EnsembleCritic, expectile_loss
from algorithms.flow import grid_flow_matching_loss, sample_actions
from algorithms.nets import (
    EmbeddedTimeVelocityField,
    NormFirstMLP,
    VelocityField,
    sinusoidal_time_embedding,
)
from algorithms.qgf import ESTIMATORS, guidance_gradient, guided_sample
from algorithms.registry import RegistryError
from suites.ogbench import QGF_OVERRIDES

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
    with pytest.raises(RegistryError, match="estimator=exact .*one of standard, noisy, jacobian"):
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


# --- closed forms: a Gaussian behaviour flow and a quadratic critic --------------------------------
BC_MEAN = torch.tensor([-0.3, 0.2], dtype=torch.float64)
BC_STD = 0.1
CURVATURE = torch.tensor([1.0, 2.0], dtype=torch.float64)
OPTIMUM = torch.tensor([0.6, -0.4], dtype=torch.float64)


def curved_critic(a: torch.Tensor) -> torch.Tensor:
    """Q(a) = -sum_j c_j (a_j - a*_j)^2, gradient -2 c (a - a*)."""
    return -(CURVATURE * (a - OPTIMUM).pow(2)).sum(-1)


def critic_gradient(a: torch.Tensor) -> torch.Tensor:
    return -2 * CURVATURE * (a - OPTIMUM)


def guided_mean(mean0: torch.Tensor, weight: float, steps: int, estimator: str) -> torch.Tensor:
    """The guided Euler chain applied to a point, from the formulas alone. With the exact Gaussian
    velocity v = m + c_t (x - t m), c_t = (t s^2 - (1 - t)) / ((1 - t)^2 + t^2 s^2), and a quadratic
    Q, every step is affine in x (away from the clips), so the chain maps the noise's mean to the
    samples' mean exactly."""
    x = mean0
    for k in range(steps):
        t = k / steps
        c = (t * BC_STD**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * BC_STD**2)
        v = BC_MEAN + c * (x - t * BC_MEAN)
        a_hat = x if estimator == "noisy" else x + (1 - t) * v
        g = critic_gradient(a_hat)
        if estimator == "jacobian":
            g = (1 + (1 - t) * c) * g  # d a_hat / dx = (1 + (1 - t) c_t) I
        x = x + (v + weight * g) / steps
    return x


def recording(critic, seen: list):
    def wrapped(a: torch.Tensor) -> torch.Tensor:
        seen.append(a.detach().abs().max().item())
        return critic(a)

    return wrapped


@pytest.mark.parametrize("weight", [0.05, 0.2])
def test_one_guided_step_moves_the_bc_mean_by_weight_times_the_gradient(weight):
    """One Euler step of the exact velocity lands every sample on the data mean m (x + (m - x));
    guidance adds w g: standard g = grad Q(a_hat) with a_hat = x + v = m, so every sample is
    m + w grad Q(m); noisy g = grad Q(x_0), per sample; jacobian g = 0, because a_hat = m does not
    depend on x at t = 0."""
    velocity = gaussian_velocity(BC_MEAN, BC_STD)
    noise = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    standard = guided_sample(velocity, curved_critic, noise, weight, 1, "standard")
    expected = BC_MEAN + weight * critic_gradient(BC_MEAN)  # w = 0.05: (-0.21, 0.08)
    torch.testing.assert_close(standard, expected.expand_as(standard), rtol=0, atol=1e-12)

    noisy = guided_sample(velocity, curved_critic, noise, weight, 1, "noisy")
    torch.testing.assert_close(
        noisy, (BC_MEAN + weight * critic_gradient(noise)).clamp(-1, 1), rtol=0, atol=1e-12
    )

    jacobian = guided_sample(velocity, curved_critic, noise, weight, 1, "jacobian")
    torch.testing.assert_close(jacobian, BC_MEAN.expand_as(jacobian), rtol=0, atol=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_guided_sample_mean_follows_the_guidance_formula(estimator):
    """Ten guided Euler steps: the samples' mean equals the closed-form chain applied to the
    noise's mean, for every weight; the guidance moves the mean toward the optimum."""
    velocity = gaussian_velocity(BC_MEAN, BC_STD)
    noise = torch.randn(2000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    means = {}
    for weight in (0.0, 0.02, 0.1):
        seen: list[float] = []
        samples = guided_sample(velocity, recording(curved_critic, seen), noise, weight, 10, estimator)
        if estimator != "noisy":
            assert max(seen) < 1  # the clip of a_hat never acts, so every step is affine
        assert samples.abs().max() < 1  # nor does the final clip
        expected = guided_mean(noise.mean(0), weight, 10, estimator)
        torch.testing.assert_close(samples.mean(0), expected, rtol=0, atol=1e-12)
        means[weight] = samples.mean(0)
    torch.testing.assert_close(means[0.0], BC_MEAN, rtol=0, atol=0.01)  # plain BC: the data mean
    distances = [(means[w] - OPTIMUM).norm().item() for w in (0.0, 0.02, 0.1)]
    assert distances[0] > distances[1] > distances[2], distances


# --- the QGF reference's protocol pieces ---------------------------------------------------------
def test_time_embedding_uses_the_reference_frequencies():
    """t' = 10000 t, f_i = 10000^(-i/8): angular frequencies 10000 down to 10000^(1/8) = 3.16 per
    unit t. The embeddings of t = 0 and t = 0.5 differ by 2 sqrt(sum_i sin^2(5000 f_i / 2)) = 4.143
    (the earlier frequencies 1 .. 1e-4 gave 0.514: nearly constant features)."""
    t = torch.tensor([[0.0], [0.5], [1e-4], [0.1]], dtype=torch.float64)
    emb = sinusoidal_time_embedding(t, 16)
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]).double())
    angles = [5000 * 10000 ** (-i / 8) for i in range(8)]
    distance = 2 * math.sqrt(sum(math.sin(a / 2) ** 2 for a in angles))
    assert (emb[1] - emb[0]).norm().item() == pytest.approx(distance, rel=1e-9)
    assert distance == pytest.approx(4.1429, abs=1e-4)
    assert emb[2, 0].item() == pytest.approx(math.cos(1.0))  # highest frequency: 10000 t
    assert emb[3, 15].item() == pytest.approx(math.sin(0.1 * 10000 ** (1 / 8)))  # lowest: 3.162 t
    torch.testing.assert_close(emb[1, :8].pow(2) + emb[1, 8:].pow(2), torch.ones(8).double())


class RecordingVelocity(torch.nn.Module):
    """v(s, x, t) = 0.5 x + t, recording the times it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[torch.Tensor] = []

    def forward(self, obs, x, t, frozen=False):
        self.times.append(t)
        return 0.5 * x + t


def test_grid_bc_loss_draws_grid_times_and_takes_a_plain_mean():
    """The QGF reference's BC loss: t uniform on {0, 1/N, ..., 1} (N + 1 values, both ends) and
    the plain mean of the squared error over batch and action dims."""
    b, d, steps = 2200, 3, 10
    x1 = torch.rand(b, d, generator=torch.Generator().manual_seed(0)) * 2 - 1
    obs = torch.zeros(b, 1)
    generator = torch.Generator().manual_seed(5)
    replay = torch.Generator().set_state(generator.get_state())
    velocity = RecordingVelocity()
    loss = grid_flow_matching_loss(velocity, obs, x1, steps, generator)

    (t,) = velocity.times
    assert t.shape == (b, 1)
    grid_index = t * steps
    torch.testing.assert_close(grid_index, grid_index.round(), rtol=0, atol=1e-6)  # on the grid
    counts = torch.bincount(grid_index.round().long().flatten(), minlength=steps + 1)
    assert len(counts) == steps + 1 and counts.min() > 150 and counts.max() < 250, counts  # 200 each

    x0 = torch.randn(b, d, generator=replay)
    torch.rand(b, 1, generator=replay)  # the draw of t
    x_t = (1 - t) * x0 + t * x1
    expected = (0.5 * x_t + t - (x1 - x0)).pow(2).mean()
    torch.testing.assert_close(loss, expected)


def test_qgf_bc_loss_ignores_valid_and_shared_bc_loss_weights_it():
    batch = random_chunk_batch(generator=torch.Generator().manual_seed(3))
    invalid = dataclasses.replace(batch, valid=torch.zeros_like(batch.valid))
    for bc_loss, scale in (("qgf", 1.0), ("shared", 0.0)):
        agent = tiny_qgf(bc_loss=bc_loss)
        state = agent.generator.get_state()
        _, metrics = agent.loss(batch)
        agent.generator.set_state(state)
        _, zeroed = agent.loss(invalid)
        assert metrics["bc_loss"].item() > 0.1
        assert zeroed["bc_loss"].item() == pytest.approx(scale * metrics["bc_loss"].item(), rel=1e-6)
    assert registry.make_config("qgf", {}).bc_loss == "shared"
    with pytest.raises(RegistryError, match="bc_loss takes one of shared, qgf"):
        registry.make_config("qgf", {"bc_loss": "grid"})


def gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def layer_norm(x: torch.Tensor, norm) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], norm.weight[..., 0, :], norm.bias[..., 0, :], 1e-6)


def test_critic_and_value_normalise_before_the_activation_with_critic_norm_first():
    after, before = tiny_qgf(), tiny_qgf(critic_norm_first=True)
    for (name, p), q in zip(after.named_parameters(), before.parameters()):  # same parameters and init
        assert torch.equal(p, q), name
    for norm in (*before.critic.net.norms, *before.value.norms):  # non-trivial LayerNorm parameters
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    obs, actions = torch.randn(5, 3), torch.rand(5, 4) * 2 - 1

    def manual(mlp, x, member=None):
        pick = (lambda p: p[member]) if member is not None else (lambda p: p)
        for linear, norm in zip(mlp.linears[:-1], mlp.norms):
            h = x @ pick(linear.weight) + pick(linear.bias)[0]
            w, b = pick(norm.weight)[0], pick(norm.bias)[0]
            x = gelu(torch.nn.functional.layer_norm(h, h.shape[-1:], w, b, 1e-6))  # norm, then GELU
        return x @ pick(mlp.linears[-1].weight) + pick(mlp.linears[-1].bias)[0]

    with torch.no_grad():
        qs = before.critic(obs, actions)
        for k in range(2):
            expected = manual(before.critic.net, torch.cat([obs, actions], -1), k)[:, 0]
            torch.testing.assert_close(qs[k], expected)
        torch.testing.assert_close(before.state_value(obs), manual(before.value, obs)[:, 0])
        before.target_critic.load_state_dict(before.critic.state_dict())
        torch.testing.assert_close(before.target_critic(obs, actions), qs)  # the target's layout too
        after.load_state_dict(before.state_dict())
        assert (after.critic(obs, actions) - qs).abs().max() > 1e-3  # the default layout differs


def test_qgf_actor_has_no_norm_on_its_last_hidden_layer_and_a_lecun_output_layer():
    torch.manual_seed(0)
    flow = EmbeddedTimeVelocityField(3, 8, (512, 512), layer_norm=True, output_init="lecun")
    assert len(flow.net.norms) == 1  # only the first hidden layer is normalised
    for norm in flow.net.norms:
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    obs, x, t = torch.randn(6, 3), torch.randn(6, 8), torch.rand(6, 1)
    first, second, out = flow.net.linears
    with torch.no_grad():
        h = gelu(layer_norm(first(torch.cat([obs, x, t], -1)), flow.net.norms[0]))
        expected = out(gelu(second(h)))  # Linear -> LayerNorm -> GELU, Linear -> GELU, Linear
        torch.testing.assert_close(flow(obs, x, t), expected)

    weight = out.weight  # (fan_in 512, fan_out 8): lecun-normal std 1/sqrt(512) = 0.0442
    assert weight.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.05)
    assert weight.abs().max().item() <= 2 / 0.87962566103423978 / math.sqrt(512)  # truncated at 2 sd
    assert weight.abs().max().item() > 0.09
    bound = math.sqrt(6 / (512 + 512))  # the hidden layers stay xavier-uniform
    assert second.weight.abs().max() <= bound
    assert torch.count_nonzero(out.bias) == 0

    plain = EmbeddedTimeVelocityField(3, 8, (512, 512))
    assert plain.net.linears[-1].weight.std().item() == pytest.approx(math.sqrt(2 / 520), rel=0.05)
    agent = tiny_qgf(actor_layer_norm=True, actor_output_init="lecun")
    assert len(agent.flow.net.norms) == len(TINY["hidden_dims"]) - 1
    with pytest.raises(RegistryError, match="actor_output_init"):
        registry.make_config("qgf", {"actor_output_init": "orthogonal"})


def test_exploration_acts_with_its_own_guidance_weight():
    agent = tiny_qgf()
    assert agent.config.online_explorative_guidance_weight == 1.0
    assert agent.exploration_params == {"guidance_weight": 1.0}
    obs = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    state = agent.act_generator.get_state()
    explored = agent.explore(obs)
    agent.act_generator.set_state(state)
    assert torch.equal(explored, agent.act(obs, guidance_weight=1.0))
    agent.act_generator.set_state(state)
    assert (explored - agent.act(obs)).abs().max() > 1e-3  # not the default evaluation weight

    plain = tiny_qgf(online_explorative_guidance_weight=0.0)
    state = plain.act_generator.get_state()
    explored = plain.explore(obs)
    plain.act_generator.set_state(state)
    noise = plain.randn(16, plain.spec.chunk_dim, generator=plain.act_generator)
    with torch.no_grad():
        assert torch.equal(explored, sample_actions(plain.flow, obs, noise, plain.config.flow_steps))


def test_qgf_suite_settings_are_the_reference_choices_and_class_defaults_the_shared_protocol():
    shared = registry.make_config("qgf", {})
    assert (shared.bc_loss, shared.critic_norm_first, shared.actor_layer_norm) == ("shared", False, False)
    assert (shared.actor_output_init, shared.time_embedding_dim) == ("xavier", 0)
    paper = registry.make_config("qgf", {**QGF_OVERRIDES, "hidden_dims": (16, 16), "batch_size": 8})
    assert (paper.bc_loss, paper.critic_norm_first, paper.actor_layer_norm) == ("qgf", True, True)
    assert (paper.actor_output_init, paper.time_embedding_dim) == ("lecun", 16)
    agent = registry.create("qgf", CHUNKED, paper)
    assert agent.critic.net.norm_first and agent.value.norm_first
    assert agent.update(random_chunk_batch(b=8))["loss"] > 0
