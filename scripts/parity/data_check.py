"""Data-path parity with the QAM reference, measured: the same dataset file and the same chunk start
indices must give the same batch (observations, chunked actions, rewards, masks, valid flags,
terminals, next observations) in the reference's loader and sampler and in ours.

The indices cover every chunk that crosses an episode end (each start within H - 1 steps before an
end), the dataset's last possible start, and random starts. The reference half runs in its own
environment (scripts/parity/reference_data.py), by both of its routes: the standard datasets' and the
100M datasets' shards' (a shard is one such file, loaded by the reference without the action clip).
Equality is exact, except rewards (the reference sums in float64, ours in float32: 1e-6 relative) and,
on the shard route, actions (declared departure: ours clips them to +-(1 - 1e-5)).

usage: python scripts/parity/data_check.py --reference DIR --reference-python PY --dataset FILE.npz
           [--task cube-single-play-singletask-task1-v0] [--horizon 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from harness.run.data import ReplayBuffer, make_env
from harness.run.sources.ogbench_source import dataset_name, load_transitions

FIELDS = ("observations", "actions", "rewards", "masks", "valid", "terminals", "next_observations")


def chunk_starts(terminals: np.ndarray, horizon: int, n_random: int = 256, seed: int = 0) -> np.ndarray:
    """Every start whose chunk reaches an episode end, the last start, and random ones."""
    size = len(terminals)
    ends = np.nonzero(terminals > 0)[0]
    crossing = (ends[:, None] - np.arange(horizon)[None]).ravel()
    rng = np.random.default_rng(seed)
    starts = np.concatenate([crossing, [size - horizon], rng.integers(0, size - horizon + 1, n_random)])
    return np.unique(starts[(starts >= 0) & (starts <= size - horizon)]).astype(np.int64)


def ours(
    dataset: Path, task: str, horizon: int, discount: float, starts: np.ndarray
) -> dict[str, np.ndarray]:
    data = load_transitions(dataset, task, make_env(task), sparse=False)
    buffer = ReplayBuffer(data, horizon=horizon, discount=discount)
    batch = buffer.chunks(torch.from_numpy(starts))
    return {"size": np.int64(buffer.size), **{k: getattr(batch, k).numpy() for k in FIELDS}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True)
    p.add_argument("--reference-python", required=True)
    p.add_argument("--dataset", required=True, help="an OGBench dataset file (or one 100M shard)")
    p.add_argument("--task", default="cube-single-play-singletask-task1-v0")
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--discount", type=float, default=0.99)
    args = p.parse_args()
    for path in (args.reference, args.reference_python, args.dataset):
        if not os.path.exists(path):
            print(f"not found: {path}", file=sys.stderr)
            return 2
    dataset = Path(args.dataset)
    if dataset.stem != dataset_name(args.task):
        print(f"the standard route needs the file named {dataset_name(args.task)}.npz", file=sys.stderr)
        return 2
    mine_terminals = load_transitions(dataset, args.task, make_env(args.task), sparse=False)["terminals"]
    starts = chunk_starts(mine_terminals, args.horizon)
    mine = ours(dataset, args.task, args.horizon, args.discount, starts)
    ok = True
    for route in ("standard", "shard"):
        ref = reference(args, route, starts)
        ok &= report(route, starts, mine, ref)
    print("data path: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def reference(args: argparse.Namespace, route: str, starts: np.ndarray) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "idx.npy", starts)
        cmd = [
            args.reference_python, str(Path(__file__).resolve().parent / "reference_data.py"),
            "--reference", args.reference, "--dataset", args.dataset, "--task", args.task, "--route", route,
            "--indices", str(Path(tmp) / "idx.npy"), "--horizon", str(args.horizon),
            "--discount", str(args.discount), "--out", str(Path(tmp) / "ref.npz"),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        if done.returncode != 0:
            raise SystemExit(f"reference side failed:\n{done.stderr[-3000:]}")
        with np.load(Path(tmp) / "ref.npz") as f:
            return {k: f[k] for k in f.files}


def tolerance(route: str, key: str) -> float:
    if key == "rewards":
        return 1e-6  # relative: float32 (ours) against float64 (reference) sums
    if key == "actions" and route == "shard":
        return 1.1e-5  # absolute: ours clips to +-(1 - 1e-5) (1.0014e-5 in float32); the shard route does not
    return 0.0


def report(route: str, starts: np.ndarray, mine: dict, ref: dict) -> bool:
    crossing = int((ref["valid"][:, -1] == 0).sum())
    ok = bool(mine["size"] == ref["size"])
    print(
        f"route {route}: {len(starts)} chunks ({crossing} cross an episode end); transitions: "
        f"ours {mine['size']}, reference {ref['size']}"
    )
    for key in FIELDS:
        diff = np.abs(mine[key].astype(np.float64) - ref[key].astype(np.float64))
        scale = max(float(np.abs(ref[key]).max()), 1.0) if key == "rewards" else 1.0
        rows = int((diff.reshape(len(starts), -1).max(-1) > 0).sum())
        good = diff.max() / scale <= tolerance(route, key) * (1 + 1e-6)
        ok &= good
        print(
            f"  {key:18s} max |ours - reference| {diff.max():.2e}  chunks differing {rows:4d}  "
            f"{'ok' if good else 'DIFFERENT'}"
        )
    return ok


if __name__ == "__main__":
    sys.exit(main())
