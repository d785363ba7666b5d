"""QAM, QAM-FQL and QAM-EDIT: the tilted target, where gradients flow, how each variant acts."""

import math

import pytest
import torch
from test_fql import bandit_buffer
from torch import nn

from algorithms import registry
from algorithms.base import Batch, EnvSpec
from algorithms.flow import euler_ode, sample_actions

TINY = {"hidden_dims": (32, 32), "num_critics": 2, "batch_size": 16}

# --- the tilted target pi_b exp(tau Q) on a problem where it is known in closed form -----------
BEHAVIOUR_STD = 0.5  # pi_b = N(0, 0.5^2), one action dimension
Q_CENTER = 0.5  # Q(a) = -(a - 0.5)^2 / 2


class GaussianBehaviourVelocity(nn.Module):
    """The exact flow-matching velocity of pi_b = N(0, s^2) on the path x_t = (1 - t) x_0 + t x_1:
    v(x, t) = (t s^2 - (1 - t)) x / ((1 - t)^2 + t^2 s^2). Stands in for the (target) base flow."""

    def forward(self, obs, x, t, frozen=False):
        if not isinstance(t, torch.Tensor):
            t = torch.full((*x.shape[:-1], 1), float(t))
        s2 = BEHAVIOUR_STD**2
        return (t * s2 - (1 - t)) * x / ((1 - t) ** 2 + t**2 * s2)


class QuadraticQ(nn.Module):
    """Stands in for the (target) critic: Q_k(s, a) = -(a - c)^2 / 2 for both members, (K, B)."""

    def forward(self, obs, actions, frozen=False):
        q = -0.5 * (actions - Q_CENTER).pow(2).sum(-1)
        return torch.stack([q, q], dim=-2)


def tilted_target(tau: float) -> tuple[float, float]:
    """Mean and std of N(0, s^2) exp(tau Q): precision 1/s^2 + tau, mean tau c / precision."""
    precision = 1 / BEHAVIOUR_STD**2 + tau
    return tau * Q_CENTER / precision, precision**-0.5


def train_on_known_target(tau: float, steps: int = 400, batch_size: int = 512):
    config = registry.make_config(
        "qam",
        {"inv_temp": tau, "hidden_dims": (64, 64), "num_critics": 2, "batch_size": batch_size, "lr": 3e-3},
    )
    agent = registry.create("qam", EnvSpec(obs_dim=1, action_dim=1, horizon=1), config, seed=0)
    # The behaviour policy and Q are known exactly; only v_f learns (by adjoint matching).
    agent.base_flow = agent.target_base_flow = GaussianBehaviourVelocity()
    agent.critic = agent.target_critic = QuadraticQ()
    g = torch.Generator().manual_seed(0)
    zeros = torch.zeros(batch_size, 1)
    for step in range(steps):
        if step == steps - 150:  # a lower learning rate for the last updates, to settle the noise
            for group in agent.optimizer.param_groups:
                group["lr"] = 3e-4
        actions = BEHAVIOUR_STD * torch.randn(batch_size, 1, 1, generator=g)
        agent.update(Batch(zeros, actions, zeros, zeros, zeros + 1, zeros, zeros[:, None]))
    return agent


def test_fine_tuned_policy_approaches_the_tilted_target():
    """tau = 0 keeps pi_b; as tau grows the policy moves toward Q's maximum at 0.5 and narrows, its
    mean within 0.04 of the closed-form tilted mean.

    The std is checked in a band below the closed form: the 10-step Euler sampler narrows these
    Gaussians (the exact pi_b velocity's own ODE realises std 0.43 for pi_b's 0.5). An affine
    fixed-point iteration of the discrete scheme (the same memoryless SDE, lean adjoint and
    regression, with 2e5 samples) gives mean 0.215 / std 0.313 at tau 3 and 0.357 / 0.203 at
    tau 10 against the closed form's 0.214 / 0.378 and 0.357 / 0.267; 400 updates of small
    networks give about 0.23 / 0.30 and 0.36 / 0.21 over seeds 0-2."""
    obs = torch.zeros(8000, 1)
    noise = torch.randn(8000, 1, generator=torch.Generator().manual_seed(1))
    behaviour = euler_ode(GaussianBehaviourVelocity(), obs, noise, 10)
    stats = {}
    for tau in (0.0, 3.0, 10.0):
        agent = train_on_known_target(tau)
        (act_noise,) = replay_act_noise(agent, tuple(obs.shape), 1)
        with torch.no_grad():
            fine = euler_ode(agent.fine_flow, obs, noise, 10)
            acted = agent.act(obs)
        stats[tau] = (fine.mean().item(), fine.std().item())
        if tau == 0:
            # acts with v_b, the behaviour policy itself; v_f, trained with a zero adjoint, matches it
            torch.testing.assert_close(acted, sample_actions(agent.base_flow, obs, act_noise, 10))
            assert abs(stats[tau][0] - behaviour.mean().item()) < 0.04, stats
            assert abs(stats[tau][1] - behaviour.std().item()) < 0.04, stats
        else:
            mean, std = tilted_target(tau)
            assert abs(stats[tau][0] - mean) < 0.04, (tau, stats[tau], (mean, std))
            assert 0.6 * std < stats[tau][1] < std, (tau, stats[tau], (mean, std))
            assert abs(acted.mean().item() - mean) < 0.05  # the acting path: the clipped ODE of v_f
    assert stats[0.0][0] < stats[3.0][0] < stats[10.0][0] < Q_CENTER
    assert stats[0.0][1] > stats[3.0][1] > stats[10.0][1]


# --- gradients -------------------------------------------------------------------------------
SPEC = EnvSpec(obs_dim=3, action_dim=2, horizon=2)


def random_batch(batch_size: int = 16, stack: tuple[int, ...] = (), seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lead = (*stack, batch_size)
    h, obs_dim, act_dim = SPEC.horizon, SPEC.obs_dim, SPEC.action_dim
    return Batch(
        observations=torch.randn(*lead, obs_dim, generator=g),
        actions=torch.rand(*lead, h, act_dim, generator=g) * 2 - 1,
        rewards=torch.randn(*lead, h, generator=g),
        masks=torch.ones(*lead, h),
        valid=(torch.rand(*lead, h, generator=g) > 0.2).float().cummin(-1).values,
        terminals=torch.zeros(*lead, h),
        next_observations=torch.randn(*lead, h, obs_dim, generator=g),
    )


def make(method: str, seed=0, **overrides):
    config = registry.make_config(method, {**TINY, **overrides})
    return registry.create(method, SPEC, config, seed=seed)


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    got = torch.autograd.grad(loss.sum(), params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]


def record_calls(module: nn.Module) -> list[dict]:
    """Record, for every forward call of a VelocityField, whether its input state and its output
    take part in autograd, and the state's shape."""
    calls = []

    def hook(_module, args, output):
        calls.append(
            {"x_grad": args[1].requires_grad, "out_grad": output.requires_grad, "shape": args[1].shape}
        )

    module.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize(
    "method, overrides",
    [("qam", {}), ("qam", {"adjoint_targets": False}), ("qam-fql", {}), ("qam-edit", {})],
)
def test_no_gradient_flows_through_the_sampling_chain(method, overrides):
    """v_f's only gradient is the adjoint regression's; no state of any sampling chain takes part in
    autograd; the critic and v_b get only their own losses' gradients (also when the adjoint uses
    the online networks); targets get none."""
    agent = make(method, **overrides)
    calls = record_calls(agent.fine_flow)
    batch = random_batch()
    loss, metrics = agent.loss(batch)
    assert not any(call["x_grad"] for call in calls)  # no sampled state carries a graph
    with_graph = [call for call in calls if call["out_grad"]]
    n = agent.config.flow_steps
    assert len(with_graph) == 1 and with_graph[0]["shape"] == (n, 16, SPEC.chunk_dim)  # one batched call
    assert len(calls) > n  # the SDE (and ODEs) did call v_f, without a graph

    for module, own_loss in [
        (agent.fine_flow, "adjoint_loss"),
        (agent.base_flow, "bc_loss"),
        (agent.critic, "critic_loss"),
    ]:
        params = list(module.parameters())
        total, own = grads(loss, params), grads(metrics[own_loss], params)
        for g_total, g_own in zip(total, own):
            torch.testing.assert_close(g_total, g_own)
        assert sum(g.abs().sum() for g in total) > 0
    assert not any(p.requires_grad for p in agent.target_critic.parameters())
    assert not any(p.requires_grad for p in agent.target_base_flow.parameters())


def test_lean_adjoint_leaves_no_graph_on_the_target_base_flow():
    agent = make("qam")
    calls = record_calls(agent.target_base_flow)
    agent.loss(random_batch())
    n = agent.config.flow_steps
    # 1 (last SDE step) + N (lean adjoint vector-Jacobian products) + 1 (batched loss term)
    assert len(calls) == n + 2
    assert sum(call["x_grad"] for call in calls) == n  # only the VJP inputs, detached leaves


def test_update_trains_every_network_and_moves_the_targets_of_critic_and_v_b():
    agent = make("qam-edit", target_tau=0.5)
    agent.update(random_batch())  # targets start as copies: after one step they still equal the old online
    before = {name: p.detach().clone() for name, p in agent.named_parameters()}
    metrics = agent.update(random_batch(seed=1))
    targets = [name for name in before if name.startswith("target_")]
    assert {name.split(".")[0] for name in targets} == {"target_critic", "target_base_flow"}
    for name, p in agent.named_parameters():
        assert not torch.equal(p, before[name]), name
        if name in targets:  # Polyak toward the pre-step online values
            online = before[name.removeprefix("target_")]
            torch.testing.assert_close(p, 0.5 * online + 0.5 * before[name])
    assert {"critic_loss", "bc_loss", "adjoint_loss", "grad_norm", "alpha", "entropy"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())


# --- acting ----------------------------------------------------------------------------------
def replay_act_noise(agent, shape, draws: int) -> list[torch.Tensor]:
    g = torch.Generator().set_state(agent.act_generator.get_state())
    return [torch.randn(shape, generator=g) for _ in range(draws)]


def test_qam_acts_with_the_ode_of_the_fine_flow_and_with_v_b_at_inv_temp_0():
    obs = torch.randn(9, SPEC.obs_dim)
    shape = (9, SPEC.chunk_dim)
    for inv_temp, flow in [(1.0, "fine_flow"), (0.0, "base_flow")]:
        agent = make("qam", inv_temp=inv_temp)
        (noise,) = replay_act_noise(agent, shape, 1)
        expected = sample_actions(getattr(agent, flow), obs, noise, agent.config.flow_steps)
        torch.testing.assert_close(agent.act(obs), expected)


def test_qam_fql_acts_with_its_one_step_policy_in_range():
    agent = make("qam-fql")
    assert agent.config.fql_alpha == 30.0 and agent.config.edit_scale == 0.0
    obs = 50 * torch.randn(64, SPEC.obs_dim)  # large inputs push mu's raw output past the box
    (noise,) = replay_act_noise(agent, (64, SPEC.chunk_dim), 1)
    raw = agent.one_step_actions(obs, noise)
    actions = agent.act(obs)
    assert raw.abs().max() > 1  # the clip is needed and applied
    torch.testing.assert_close(actions, raw.clamp(-1, 1))
    assert actions.abs().max() <= 1
    flow_actions = sample_actions(agent.fine_flow, obs, noise, agent.config.flow_steps)
    assert not torch.allclose(actions, flow_actions)


def test_qam_edit_acts_with_the_sampled_edit_of_the_flow_action_in_range():
    agent = make("qam-edit", edit_scale=0.9)
    assert agent.config.fql_alpha == 0.0
    obs = 50 * torch.randn(64, SPEC.obs_dim)
    flow_noise, edit_noise = replay_act_noise(agent, (64, SPEC.chunk_dim), 2)
    actions = agent.act(obs)
    flow_actions = sample_actions(agent.fine_flow, obs, flow_noise, agent.config.flow_steps)
    delta, _ = agent.edit_policy(torch.cat([obs, flow_actions], -1), edit_noise)
    torch.testing.assert_close(actions, (flow_actions + 0.9 * delta).clamp(-1, 1))
    mode, _ = agent.edit_policy(torch.cat([obs, flow_actions], -1), torch.zeros_like(edit_noise))
    assert not torch.allclose(actions, (flow_actions + 0.9 * mode).clamp(-1, 1))  # sampled, not the mode
    assert actions.abs().max() <= 1
    assert not torch.equal(agent.act(obs), actions)  # fresh noise for every call


def test_fql_and_edit_together_are_refused():
    with pytest.raises(registry.RegistryError, match="fql_alpha.*edit_scale"):
        make("qam", fql_alpha=1.0, edit_scale=0.1)


def test_presets_are_qam_with_their_own_defaults():
    assert registry.get("qam").default_config().inv_temp == 0.3
    fql, edit = registry.get("qam-fql"), registry.get("qam-edit")
    assert fql.cls is edit.cls is registry.get("qam").cls
    assert (fql.default_config().inv_temp, fql.default_config().fql_alpha) == (0.3, 30.0)
    assert (edit.default_config().inv_temp, edit.default_config().edit_scale) == (3.0, 0.1)
    # a preset whose switch is 0 (rows of the per-domain table) is plain QAM: no extra networks
    plain = make("qam-edit", edit_scale=0.0)
    assert not hasattr(plain, "edit_policy") and not hasattr(plain, "one_step")


# --- stacked seeds ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["qam", "qam-fql", "qam-edit", "fbrac"])
def test_stacked_seeds_keep_every_seed_separate(method):
    agent = make(method, seed=[0, 1])
    batch = random_batch(stack=(2,))
    state = agent.generator.get_state()
    loss, metrics = agent.loss(batch)
    assert loss.shape == (2,) and all(v.shape == (2,) for v in metrics.values())
    # changing seed 1's data leaves seed 0's loss and metrics exactly as they were
    other = random_batch(stack=(2,), seed=1)
    mixed = Batch(*(torch.stack([a[0], b[1]]) for a, b in zip(batch.tensors(), other.tensors())))
    agent.generator.set_state(state)
    loss2, metrics2 = agent.loss(mixed)
    assert loss2[0] == loss[0] and loss2[1] != loss[1]
    assert all(metrics2[k][0] == metrics[k][0] for k in metrics)

    result = agent.update(random_batch(stack=(2,), seed=2))
    assert all(isinstance(v, list) and len(v) == 2 for v in result.values())
    assert result["loss"][0] != result["loss"][1]
    assert agent.act(torch.randn(2, 5, SPEC.obs_dim)).shape == (2, 5, SPEC.chunk_dim)


def test_stacked_seeds_on_buffer_batches():
    config = registry.make_config("qam-edit", TINY)
    agent = registry.create("qam-edit", EnvSpec(2, 2, horizon=1), config, seed=[0, 1, 2])
    metrics = agent.update(bandit_buffer(100).sample(16, stack=(3,)))
    assert all(isinstance(v, list) and len(v) == 3 for v in metrics.values())
    assert agent.log_alpha.shape == (3, 1)


# --- gradient clipping (clip_grad) -------------------------------------------------------------
def clipped_by_hand(agent, batch: Batch) -> None:
    """One update of an agent built with clip_grad=False, its gradients scaled by hand to a global
    norm of at most 1, as clip_grad=True (the default, and the only update before the key) does."""
    agent.optimizer.zero_grad(set_to_none=True)
    agent.gradient_step(batch)
    params = [p for group in agent.optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert norm > 1  # the clip acts on this batch
    for p in params:
        p.grad.mul_(1.0 / (norm + 1e-6))
    agent._polyak_update()
    agent.optimizer.step()


@pytest.mark.parametrize("method", ["qam", "qam-edit"])
def test_clip_grad_on_is_the_global_norm_clip_and_off_skips_it_only(method):
    clipped, by_hand, unclipped = make(method), make(method, clip_grad=False), make(method, clip_grad=False)
    assert clipped.config.clip_grad and clipped.max_grad_norm == 1.0 and unclipped.max_grad_norm is None
    for step in range(2):
        batch = random_batch(seed=step)
        metrics = clipped.update(batch)
        assert metrics["grad_norm"] > 1
        clipped_by_hand(by_hand, batch)
        unclipped.update(batch)
    params = dict(clipped.named_parameters())
    for name, p in by_hand.named_parameters():
        torch.testing.assert_close(p, params[name], rtol=1e-5, atol=1e-6)
    moved = [n for n, p in unclipped.named_parameters() if not torch.allclose(p, params[n], atol=1e-6)]
    assert any(n.startswith("critic") for n in moved)  # the unclipped steps are larger


def test_bam_built_on_qam_always_clips():
    agent = make("bam")
    assert agent.max_grad_norm == 1.0 and "clip_grad" not in registry.config_fields("bam")
    assert agent.update(random_batch())["grad_norm"] > 0
