"""Evaluation-path parity with the QAM reference, measured: one fixed policy (a deterministic function
of the observation, scripts/parity/fixed_policy.py) run through the reference's evaluation loop and
through ours, on the same task with the same reset seeds, must give the same return, length and
success episode by episode, and the same executed actions and observations step by step (so a policy
that never succeeds still tests where chunks start and end). Ours runs its episodes over several lockstep slots, as in training runs.

usage: python scripts/parity/eval_check.py --reference DIR --reference-python PY --dataset-dir DIR
           [--task cube-single-play-singletask-task1-v0] [--episodes 6] [--slots 3] [--horizon 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gymnasium
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixed_policy import fixed_policy  # noqa: E402

from algorithms.base import Agent, BaseConfig, EnvSpec  # noqa: E402
from harness.run.envs import LocalEnvs, make_env  # noqa: E402
from harness.run.evaluate import episode_seeds, run_episodes  # noqa: E402


class FixedPolicyAgent(Agent):
    """Acts with the fixed policy; never trained."""

    name = "parity-fixed-policy"

    def __init__(self, spec: EnvSpec, seed: int) -> None:
        super().__init__(spec, BaseConfig())
        self.policy = fixed_policy(spec.obs_dim, spec.chunk_dim, seed)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.policy(obs.cpu().numpy()))


class Recorder(gymnasium.Wrapper):
    """Keeps every episode's executed actions and observations, by reset seed."""

    def __init__(self, env, episodes: dict) -> None:
        super().__init__(env)
        self.episodes, self.current = episodes, None

    def reset(self, *, seed=None, **kwargs):
        self.current = self.episodes.setdefault(seed, {"actions": [], "observations": []})
        return self.env.reset(seed=seed, **kwargs)

    def step(self, action):
        out = self.env.step(action)
        self.current["actions"].append(np.asarray(action, dtype=np.float64))
        self.current["observations"].append(np.asarray(out[0], dtype=np.float64))
        return out


def ours(task: str, horizon: int, seeds: list[int], slots: int, policy_seed: int) -> dict[str, np.ndarray]:
    episodes: dict = {}
    envs = [Recorder(make_env(task), episodes) for _ in range(slots)]
    obs_dim = envs[0].observation_space.shape[-1]
    spec = EnvSpec(obs_dim, envs[0].action_space.shape[-1], horizon)
    agent = FixedPolicyAgent(spec, policy_seed)
    stats = run_episodes(agent, LocalEnvs(envs), episodes=len(seeds), seeds=[seeds])[0]
    assert stats is not None
    out = {"returns": stats.returns, "lengths": stats.lengths, "success": stats.success}
    for i, seed in enumerate(seeds):
        out.update({f"{k}{i}": np.array(v) for k, v in episodes[seed].items()})
    return out


def trajectory_error(mine: dict, ref: dict, key: str) -> float:
    """max |ours - reference| over an episode's steps; inf when the episodes differ in length."""
    a, b = mine[key], ref[key]
    return float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True)
    p.add_argument("--reference-python", required=True)
    p.add_argument("--dataset-dir", required=True, help="the folder holding the task's dataset file")
    p.add_argument("--task", default="cube-single-play-singletask-task1-v0")
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--slots", type=int, default=3)
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--policy-seed", type=int, default=0)
    args = p.parse_args()
    for path in (args.reference, args.reference_python, args.dataset_dir):
        if not os.path.exists(path):
            print(f"not found: {path}", file=sys.stderr)
            return 2
    seeds = episode_seeds(0, 0, n=args.episodes)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ref.npz"
        cmd = [
            args.reference_python, str(Path(__file__).resolve().parent / "reference_eval.py"),
            "--reference", args.reference, "--dataset-dir", args.dataset_dir, "--task", args.task,
            "--seeds", ",".join(map(str, seeds)), "--horizon", str(args.horizon),
            "--policy-seed", str(args.policy_seed), "--out", str(out),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        if done.returncode != 0:
            print(f"reference side failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        with np.load(out) as f:
            ref = {k: f[k] for k in f.files}
    mine = ours(args.task, args.horizon, seeds, args.slots, args.policy_seed)
    ok = True
    print(f"{args.episodes} episodes of {args.task}, ours over {args.slots} slots")
    print(
        "  episode  seed        return (ours / ref)   length (ours / ref)   success (ours / ref)   trajectories"
    )
    for i, seed in enumerate(seeds):
        row = [(mine[k][i], ref[k][i]) for k in ("returns", "lengths", "success")]
        traj = [trajectory_error(mine, ref, f"{k}{i}") for k in ("actions", "observations")]
        ok &= (
            all(abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b))) for a, b in row) and max(traj) == 0
        )
        print(
            f"  {i:7d}  {seed:10d}  {row[0][0]:9.3f} / {row[0][1]:9.3f}  {row[1][0]:7.0f} / {row[1][1]:7.0f}"
            f"  {row[2][0]:5.0f} / {row[2][1]:5.0f}   max |diff| actions {traj[0]:.1e}, observations {traj[1]:.1e}"
        )
    print("evaluation path: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
