"""Convert the QAM reference's released per-seed results (its exp_data/*.pkl) into analysis/data/.

Each pickle maps (task, domain or aggregate name, method) to a (30, 12) array: success rates at every
50K steps (1M offline then 500K online; RLPD's (10, 12): its 500K online steps only) for 12 seeds.
The per-task arrays become rows of the records schema (method, task, domain, seed, phase, step,
success), the released method names kept; the aggregates (a domain, `all`, `all-rep`) are not
stored, but each is checked here to be the mean of its tasks at every step before anything is
written. Run it in flowarena's environment (numpy, pandas) on a checkout of ColinQiyangLi/qam:

    python scripts/released/convert.py --reference PATH/TO/qam [--check]

`--check` writes nothing and fails unless the shipped files equal a fresh conversion.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

EVAL_INTERVAL = 50_000
OFFLINE_STEPS = 1_000_000
TOTAL_STEPS = 1_500_000
DATA = Path(__file__).resolve().parents[2] / "analysis" / "data"
# released pickle -> the parquet file analysis/records.py reads
FILES = {
    "qam-exp-data.pkl": "qam_paper_results.parquet",
    "qam-exp-data-quality.pkl": "qam_quality_results.parquet",
    "qam-exp-data-sensitive.pkl": "qam_sensitivity_results.parquet",
}
TASK = re.compile(r"^(?P<domain>.+)-singletask-task\d+-v0$")


def convert(released: dict) -> pd.DataFrame:
    """The per-task arrays as records rows; every aggregate checked against its tasks' mean."""
    tasks = {key: value for key, value in released.items() if TASK.match(key[0])}
    frames = [_rows(task, method, np.asarray(array)) for (task, method), array in tasks.items()]
    for (name, method), array in released.items():
        if (name, method) not in tasks:
            _check_aggregate(name, method, np.asarray(array), tasks)
    return pd.concat(frames, ignore_index=True)  # in the pickle's order


def _rows(task: str, method: str, array: np.ndarray) -> pd.DataFrame:
    evals, seeds = array.shape
    first = TOTAL_STEPS - (evals - 1) * EVAL_INTERVAL  # RLPD's 10 evaluations are the online ones
    steps = np.repeat(first + EVAL_INTERVAL * np.arange(evals), seeds)
    return pd.DataFrame(
        {
            "method": method,
            "task": task,
            "domain": TASK.match(task)["domain"],
            "seed": np.tile(np.arange(seeds), evals).astype(np.int64),
            "phase": np.where(steps <= OFFLINE_STEPS, "offline", "online"),
            "step": steps.astype(np.int64),
            "success": array.reshape(-1).astype(np.float64),
        }
    )


def _check_aggregate(name: str, method: str, array: np.ndarray, tasks: dict) -> None:
    """An aggregate is the mean over its tasks and seeds at each step (its seed columns are not the
    tasks' seeds, so only the per-step means are compared)."""
    members = [v for (task, m), v in tasks.items() if m == method and _belongs(task, name)]
    if not members:
        raise SystemExit(f"aggregate {name!r} of {method}: no tasks of it in the pickle")
    expected = np.mean([np.asarray(v).mean(axis=1) for v in members], axis=0)
    if not np.allclose(array.mean(axis=1), expected, atol=1e-9):
        raise SystemExit(f"aggregate {name!r} of {method} is not the mean of its {len(members)} tasks")


def _belongs(task: str, aggregate: str) -> bool:
    return aggregate in ("all", "all-rep") or TASK.match(task)["domain"] == aggregate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path, help="a checkout of ColinQiyangLi/qam")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = parser.parse_args()
    for pickled, parquet in FILES.items():
        with open(args.reference / "exp_data" / pickled, "rb") as handle:
            rows = convert(pickle.load(handle))
        target = DATA / parquet
        if args.check:
            shipped = pd.read_parquet(target)
            pd.testing.assert_frame_equal(shipped, rows)
            print(f"{target.name}: equals the conversion of {pickled} ({len(rows):,} rows)")
        else:
            rows.to_parquet(target, index=False)
            print(f"{pickled} -> {target} ({len(rows):,} rows, {rows['method'].nunique()} methods)")


if __name__ == "__main__":
    sys.exit(main())
