"""The reference half of the data-path check: runs inside the reference's JAX environment.

Loads one OGBench dataset file the way the reference's main.py does, by either of its two routes:
`standard` (envs/env_utils.make_env_and_datasets: ogbench's loader, then actions clipped to
+-(1 - 1e-5)) or `shard` (envs/ogbench_utils.make_ogbench_env_and_datasets, the route of the 100M
datasets' shards, without the clip), then its utils/datasets.py Dataset, and builds the chunked batch of `Dataset.sample_sequence` at given start
indices (the reference draws them with np.random.randint; here that draw returns the given ones).
Writes the indices and the batch to an .npz for scripts/parity/data_check.py.

usage: python reference_data.py --reference DIR --dataset FILE.npz --task NAME --indices IDX.npy
           --horizon 5 --discount 0.99 --out OUT.npz
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--task", required=True, help="e.g. cube-single-play-singletask-task1-v0")
    p.add_argument("--indices", required=True, help="a .npy of chunk start indices")
    p.add_argument("--route", choices=("standard", "shard"), default="standard")
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--discount", type=float, default=0.99)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    sys.path.insert(0, args.reference)
    from utils.datasets import Dataset  # noqa: PLC0415

    if args.route == "shard":
        from envs.ogbench_utils import make_ogbench_env_and_datasets  # noqa: PLC0415

        _, _, train, _ = make_ogbench_env_and_datasets(
            args.task, dataset_path=args.dataset, compact_dataset=False
        )
    else:
        import functools  # noqa: PLC0415
        import os  # noqa: PLC0415

        import ogbench  # noqa: PLC0415
        from envs import env_utils  # noqa: PLC0415

        # the standard route reads <dataset_dir>/<name>.npz: point ogbench at the given file's folder
        here = os.path.dirname(os.path.abspath(args.dataset))
        ogbench.make_env_and_datasets = functools.partial(ogbench.make_env_and_datasets, dataset_dir=here)
        _, _, train, _ = env_utils.make_env_and_datasets(args.task)
    dataset = Dataset.create(**train)
    idxs = np.load(args.indices)
    original = np.random.randint
    np.random.randint = lambda *a, **k: idxs  # the sampler's one random draw: the given starts
    try:
        batch = dataset.sample_sequence(len(idxs), args.horizon, args.discount)
    finally:
        np.random.randint = original
    np.savez(args.out, idxs=idxs, size=np.int64(dataset.size), **{k: np.asarray(v) for k, v in batch.items()})
    print(f"{len(idxs)} chunks of {args.horizon} from {dataset.size} transitions -> {args.out}")


if __name__ == "__main__":
    main()
