"""The reference half of the evaluation-path check: runs inside the reference's JAX environment.

Builds the evaluation environment the way the reference's main.py does (envs/env_utils.py) and runs
its `evaluation.evaluate` loop with the fixed policy of fixed_policy.py in place of an agent; episode
i resets with the i-th given seed (the reference resets without one; here the reset is handed it).
Writes per-episode returns, lengths, successes, executed actions and observations to an .npz for scripts/parity/eval_check.py.

usage: python reference_eval.py --reference DIR --dataset-dir DIR --task NAME --seeds 1,2,3
           --horizon 5 --out OUT.npz
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixed_policy import fixed_policy  # noqa: E402


class FixedAgent:
    """Stands in for a reference agent: sample_actions(observations, rng) -> the flattened chunk."""

    def __init__(self, act) -> None:
        self.act = act

    def sample_actions(self, observations, rng=None):
        return self.act(observations)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True)
    p.add_argument("--dataset-dir", required=True, help="the folder holding the task's dataset file")
    p.add_argument("--task", required=True)
    p.add_argument("--seeds", required=True, help="comma-separated reset seeds, one per episode")
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--policy-seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    sys.path.insert(0, args.reference)
    import ogbench  # noqa: PLC0415
    from envs import env_utils  # noqa: PLC0415
    from evaluation import evaluate  # noqa: PLC0415

    ogbench.make_env_and_datasets = functools.partial(
        ogbench.make_env_and_datasets, dataset_dir=args.dataset_dir
    )
    _, eval_env, train, _ = env_utils.make_env_and_datasets(args.task)
    seeds = iter(int(s) for s in args.seeds.split(","))
    reset = eval_env.reset
    eval_env.reset = lambda *a, **k: reset(seed=next(seeds))
    obs_dim, action_dim = train["observations"].shape[-1], train["actions"].shape[-1]
    agent = FixedAgent(fixed_policy(obs_dim, args.horizon * action_dim, args.policy_seed))
    n = len(args.seeds.split(","))
    _, trajs, _ = evaluate(agent=agent, env=eval_env, action_dim=action_dim, num_eval_episodes=n)
    np.savez(
        args.out,
        returns=np.array([np.sum(t["reward"]) for t in trajs]),
        lengths=np.array([len(t["reward"]) for t in trajs]),
        success=np.array([float(t["info"][-1]["success"]) for t in trajs]),
        **{f"actions{i}": np.array(t["action"], dtype=np.float64) for i, t in enumerate(trajs)},
        **{
            f"observations{i}": np.array(t["next_observation"], dtype=np.float64) for i, t in enumerate(trajs)
        },
    )
    print(f"{n} episodes -> {args.out}")


if __name__ == "__main__":
    main()
