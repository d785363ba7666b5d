"""ReBRAC: the BC penalty pins the actor to the data, the Q term alone finds a bandit's optimum, the
target-smoothing noise respects its clip, and the targets move only on every actor_freq-th update."""

import torch
from test_fql import BEST_ACTION, bandit_buffer, true_q

from algorithms import registry
from algorithms.base import Batch, EnvSpec

TINY = {"hidden_dims": (64, 64), "num_critics": 2, "batch_size": 32}
DATA_CHUNK = torch.tensor([[0.6, -0.4], [0.2, 0.9]])  # the dataset's only action chunk (H = 2)
STATE = torch.tensor([0.3, -1.2])


def make(spec: EnvSpec, **overrides):
    config = registry.make_config("rebrac", {**TINY, **overrides})
    return registry.create("rebrac", spec, config, seed=0)


def one_state_batch(size: int) -> Batch:
    """Every sample is the same state, the same action chunk and reward 1, episode over after it."""
    ones = torch.ones(size, 2)
    return Batch(
        observations=STATE.expand(size, 2),
        actions=DATA_CHUNK.expand(size, 2, 2),
        rewards=ones,
        masks=torch.zeros(size, 2),
        valid=ones,
        terminals=ones,
        next_observations=STATE.expand(size, 2, 2),
    )


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_a_huge_bc_weight_returns_the_dataset_action(one_thread):
    agent = make(EnvSpec(2, 2, horizon=2), alpha_actor=1000.0, actor_noise=0.0, lr=1e-3)
    batch = one_state_batch(32)
    start = (agent.act(STATE[None]) - DATA_CHUNK.flatten()).abs().max().item()
    for _ in range(200):
        agent.update(batch)
    error = (agent.act(STATE[None]) - DATA_CHUNK.flatten()).abs().max().item()
    assert start > 0.5  # the untrained actor outputs about 0
    assert error < 0.01, error  # (2e-4 here)


def test_without_bc_the_actor_moves_to_the_bandit_optimum(one_thread):
    buffer = bandit_buffer()
    agent = make(EnvSpec(2, 2, horizon=1), alpha_actor=0.0, actor_noise=0.0, lr=3e-3, batch_size=128)
    test_obs = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    start_value = true_q(agent.act(test_obs)).mean().item()
    for _ in range(600):
        agent.update(buffer.sample(128))
    actions = agent.act(test_obs)
    value = true_q(actions).mean().item()
    distance = (actions - torch.from_numpy(BEST_ACTION)).norm(dim=-1).mean().item()
    assert start_value < -0.3  # the untrained actor outputs about 0: Q = -0.34
    assert value > -0.02, value  # the dataset's actions average about -1.0
    assert distance < 0.12, distance  # (0.07 here)


def test_the_target_noise_is_clipped_as_configured():
    obs = torch.randn(4096, 3, generator=torch.Generator().manual_seed(2))
    clipped = make(EnvSpec(3, 2, horizon=1), actor_noise=10.0, actor_noise_clip=0.3)
    for noisy, clean in (
        (clipped.next_actions(obs), clipped.target_actor(obs)),
        (clipped.act(obs), clipped.actor(obs)),
    ):
        noise = (noisy - clean.detach()).abs()
        assert noise.max().item() <= 0.3 + 1e-6
        assert (noise > 0.299).float().mean().item() > 0.95  # P(|N(0, 10^2)| < 0.3) = 0.024
    loose = make(EnvSpec(3, 2, horizon=1), actor_noise=0.2, actor_noise_clip=100.0)
    noise = loose.next_actions(obs) - loose.target_actor(obs)
    assert abs(noise.std().item() - 0.2) < 0.01  # unclipped: the configured std


def test_targets_move_on_every_second_update_and_the_actor_on_every_update():
    agent = make(EnvSpec(2, 2, horizon=1), alpha_actor=0.1, target_tau=0.5)
    buffer = bandit_buffer(200)
    critic0, actor0 = params(agent.critic), params(agent.actor)
    agent.update(buffer.sample(32))
    critic1, actor1 = params(agent.critic), params(agent.actor)
    for target, before in ((agent.target_critic, critic0), (agent.target_actor, actor0)):
        for got, expected in zip(params(target), before):
            assert torch.equal(got, expected)  # update 1 leaves the targets alone
    assert all(not torch.equal(a, b) for a, b in zip(actor1, actor0))  # the actor did train
    fresh = make(EnvSpec(2, 2, horizon=1), alpha_actor=0.1, target_tau=0.5)
    fresh.load_state_dict(agent.state_dict())  # the update count travels with the state
    batch = buffer.sample(32)
    for trained in (agent, fresh):
        trained.update(batch)
        for target, start, before in (
            (trained.target_critic, critic0, critic1),
            (trained.target_actor, actor0, actor1),
        ):
            for got, t0, p1 in zip(params(target), start, before):
                torch.testing.assert_close(got, 0.5 * t0 + 0.5 * p1)  # from the pre-step parameters
