"""Parallel evaluation: many environments in lockstep, in this process or in worker processes,
gives the episodes of sequential evaluation (identical per episode for a deterministic policy,
the same distribution for a stochastic one), and never depends on where the slots are stepped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TASK
from eval_support import CoinEnv, NoisyPolicy, SeedPolicy, coin_env

from algorithms import registry
from algorithms.base import EnvSpec
from harness.run.envs import LocalEnvs, WorkerEnvs, make_env, make_eval_envs
from harness.run.evaluate import default_eval_envs, episode_seeds, evaluate, run_episodes
from suites.smoke import TINY

SEEDS = episode_seeds(0, 0, 2, n=400)


def stats(agent, envs, episodes, seeds=SEEDS):
    return run_episodes(agent, envs, episodes=episodes, seeds=[seeds[:episodes]])[0]


def test_deterministic_policy_gives_identical_episodes_on_any_number_of_envs():
    sequential = stats(SeedPolicy(), LocalEnvs([CoinEnv()]), 40)
    assert 0 < sequential.success.mean() < 1 and len(set(sequential.lengths)) > 1  # a varied test
    for n in (3, 8, 40):
        parallel = stats(SeedPolicy(), LocalEnvs([CoinEnv() for _ in range(n)]), 40)
        np.testing.assert_array_equal(parallel.success, sequential.success)
        np.testing.assert_array_equal(parallel.returns, sequential.returns)
        np.testing.assert_array_equal(parallel.lengths, sequential.lengths)


def test_stochastic_policy_gives_the_same_distribution_on_many_envs():
    """Different noise per episode, the same law: success rates and mean returns of 400 episodes
    agree within sampling error (the comparison is deterministic, not flaky)."""
    sequential = stats(NoisyPolicy(seed=1), LocalEnvs([CoinEnv()]), 400)
    parallel = stats(NoisyPolicy(seed=1), LocalEnvs([CoinEnv() for _ in range(16)]), 400)
    assert not np.array_equal(parallel.returns, sequential.returns)  # other noise per episode
    p = sequential.success.mean()
    assert 0.1 < p < 0.9
    assert abs(parallel.success.mean() - p) < 3 * math.sqrt(2 * p * (1 - p) / 400)
    spread = math.sqrt(sequential.returns.var() / 400 + parallel.returns.var() / 400)
    assert abs(parallel.returns.mean() - sequential.returns.mean()) < 3 * spread
    assert abs(parallel.lengths.mean() - sequential.lengths.mean()) < 0.5


def test_a_fixed_number_of_envs_is_deterministic():
    first = stats(NoisyPolicy(seed=2), LocalEnvs([CoinEnv() for _ in range(5)]), 30)
    again = stats(NoisyPolicy(seed=2), LocalEnvs([CoinEnv() for _ in range(5)]), 30)
    np.testing.assert_array_equal(first.returns, again.returns)


def test_worker_processes_give_the_numbers_of_local_envs():
    local = stats(NoisyPolicy(seed=3), LocalEnvs([CoinEnv() for _ in range(6)]), 30)
    workers = WorkerEnvs(coin_env, 6, workers=2)
    try:
        remote = stats(NoisyPolicy(seed=3), workers, 30)
    finally:
        workers.close()
    for name in ("success", "returns", "lengths"):
        np.testing.assert_array_equal(getattr(remote, name), getattr(local, name))


def test_stacked_seeds_evaluate_as_each_seed_alone():
    """Member m of a stacked agent plays its own episodes with its own acting noise: the numbers
    each seed gets alone."""
    stacked = NoisyPolicy(seed=0)
    stacked.stack = (2,)
    stacked.act_generator = registry_stack([4, 9])
    seeds = [SEEDS[:12], SEEDS[100:112]]
    got = run_episodes(stacked, LocalEnvs([CoinEnv() for _ in range(6)]), episodes=12, seeds=seeds)
    for member, seed in enumerate((4, 9)):
        alone = NoisyPolicy(seed=0)
        alone.act_generator.manual_seed(seed)
        expected = stats(alone, LocalEnvs([CoinEnv() for _ in range(3)]), 12, seeds[member])
        np.testing.assert_allclose(got[member].returns, expected.returns, rtol=1e-6)
        np.testing.assert_array_equal(got[member].lengths, expected.lengths)


def registry_stack(seeds):
    from algorithms.base import GeneratorStack

    return GeneratorStack([torch.Generator().manual_seed(s) for s in seeds])


def test_an_inactive_member_plays_no_episode():
    stacked = NoisyPolicy(seed=0)
    stacked.stack, stacked.act_generator = (2,), registry_stack([1, 2])
    got = run_episodes(
        stacked,
        LocalEnvs([CoinEnv() for _ in range(4)]),
        episodes=5,
        seeds=[SEEDS[:5]] * 2,
        active=[False, True],
    )
    assert got[0] is None and len(got[1].returns) == 5


def test_real_task_in_worker_processes_equals_this_process():
    """A tiny FQL on the cube task: two worker processes, the same result as in this process."""
    env = make_env(TASK)
    spec = EnvSpec(env.observation_space.shape[-1], env.action_space.shape[-1], horizon=5)
    config = registry.make_config("fql", TINY)
    seeds = episode_seeds(0, 0, 2, n=2)
    results = []
    for workers in (0, 2):
        agent = registry.create("fql", spec, config, seed=0)
        envs = make_eval_envs(TASK, 2, workers=workers, first=env if not workers else None)
        try:
            results.append(evaluate(agent, envs, episodes=2, seeds=seeds))
        finally:
            envs.close()
    assert results[0] == results[1]
    assert results[0].episode_length > 0


@pytest.mark.parametrize(
    ("episodes", "requested", "expected"), [(50, 10, 10), (2, 10, 2), (1, 1, 1), (5, 8, 5)]
)
def test_default_eval_envs(episodes, requested, expected):
    assert default_eval_envs(episodes, requested) == expected


def test_environments_hide_gymnasiums_box_precision_warning_and_only_it():
    import subprocess
    import sys

    made = "import ogbench; env = ogbench.make_env_and_datasets(TASK, env_only=True)"
    ours = "from harness.run.envs import make_env; env = make_env(TASK)"
    use = "env.reset(seed=0); env.step(env.action_space.sample())"
    other = 'import warnings; warnings.warn("Box low\'s precision lowered by casting to float32 elsewhere")'

    def stderr(make: str) -> str:
        code = f"TASK = {TASK!r}\n{make}\n{use}\n{other}\n"
        done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "WARN: Box low's precision lowered" in stderr(made)  # gymnasium does warn without the filter
    quiet = stderr(ours)
    assert "WARN: Box" not in quiet and "precision lowered by casting to float32 elsewhere" in quiet
