"""Stacked seeds end to end: `flowarena run --seeds` and `flowarena sweep --seeds-per-process`
write every seed's records in a lone run's format, resume (after a stop request or kill -9)
exactly, and let the other seeds finish when one diverges."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TASK, kill_after_checkpoint, run_args
from plugin_method import FlowBC

from algorithms import registry
from algorithms.base import EnvSpec
from harness.cli import main
from harness.run import train
from harness.run.checkpoint import NEXT_CHECKPOINT, resolve_pending_checkpoints
from harness.run.records import EVAL_COLUMNS

VARIANT_DIR = Path("default/fql") / TASK


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["wall_time_s"]).reset_index(drop=True)


def stacked_args(dataset_dir: Path, out: Path, seeds: str = "0,1", **flags) -> list[str]:
    args = run_args(dataset_dir, out, **flags)
    at = args.index("--seed")
    return [*args[:at], "--seeds", seeds, *args[at + 2 :]]


def records(run_dir: Path, kind: str = "evals") -> pd.DataFrame:
    return comparable(pd.read_parquet(run_dir / f"{kind}.parquet"))


@pytest.fixture(scope="module")
def stacked_run(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fql seeds 0 and 1 stacked, 30 steps, and seed 0 alone beside them."""
    out = tmp_path_factory.mktemp("stacked")
    assert main(stacked_args(dataset_dir, out, steps=30, checkpoint_interval=10)) == 0
    assert main(run_args(dataset_dir, out / "alone", steps=30, checkpoint_interval=10)) == 0
    return out


def test_every_seed_has_a_lone_runs_records(stacked_run):
    alone = stacked_run / "alone" / VARIANT_DIR / "seed0"
    for seed in (0, 1):
        run_dir = stacked_run / VARIANT_DIR / f"seed{seed}"
        evals, train_rows = records(run_dir), records(run_dir, "train")
        assert list(pd.read_parquet(run_dir / "evals.parquet").columns) == EVAL_COLUMNS
        assert list(train_rows.columns) == list(records(alone, "train").columns)
        assert (evals["seed"] == seed).all() and evals["step"].tolist() == [15, 30]
        assert train_rows["step"].tolist() == [10, 20, 30]
        spec = json.loads((run_dir / "spec.json").read_text())
        assert spec["seed"] == seed and set(spec) == set(json.loads((alone / "spec.json").read_text()))
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "done" and status["seed_group"] == [0, 1]
        checkpoint = torch.load(run_dir / "ckpt.pt", weights_only=True)
        lone_checkpoint = torch.load(alone / "ckpt.pt", weights_only=True)
        assert set(lone_checkpoint) <= set(checkpoint) and checkpoint["seed_group"] == [0, 1]
        agent = registry.create("fql", EnvSpec(37, 5, horizon=5), registry.make_config("fql", spec["config"]))
        agent.load_state_dict(checkpoint["agent"])  # a seed's slice is a lone agent's state
    # seed 0 stacked trains as seed 0 alone: the same random streams, equal up to float rounding
    stacked_train = records(stacked_run / VARIANT_DIR / "seed0", "train")
    pd.testing.assert_frame_equal(stacked_train, records(alone, "train"), rtol=1e-3)


def test_a_stacked_seed_can_be_evaluated_alone(stacked_run):
    from harness.run.reevaluate import evaluate_checkpoint

    rows = evaluate_checkpoint(stacked_run / VARIANT_DIR / "seed1", [{}], device="cpu")
    assert rows[0]["step"] == 30 and rows[0]["seed"] == 1 and rows[0]["n_episodes"] == 2


def test_stopped_group_resumes_with_the_same_records(stacked_run, dataset_dir, tmp_path):
    train.request_stop()  # as a preemption signal handler would: checkpoint after step 1, then stop
    try:
        assert main(stacked_args(dataset_dir, tmp_path, steps=30, checkpoint_interval=10)) == 1
    finally:
        train.clear_stop()
    status = json.loads((tmp_path / VARIANT_DIR / "seed1" / "status.json").read_text())
    assert status["state"] == "pending" and status["checkpoint_step"] == 1
    assert main(stacked_args(dataset_dir, tmp_path, steps=30, checkpoint_interval=10)) == 0
    for seed in (0, 1):
        for kind in ("evals", "train"):
            expected = records(stacked_run / VARIANT_DIR / f"seed{seed}", kind)
            pd.testing.assert_frame_equal(records(tmp_path / VARIANT_DIR / f"seed{seed}", kind), expected)


def test_killed_group_resumes_with_the_same_records(dataset_dir, tmp_path):
    args = stacked_args(dataset_dir, tmp_path / "whole", steps=40, checkpoint_interval=10)
    subprocess.run([sys.executable, "-m", "harness.cli", *args], check=True, capture_output=True)
    args = stacked_args(dataset_dir, tmp_path / "killed", steps=40, checkpoint_interval=10)
    status = kill_after_checkpoint(args, tmp_path / "killed" / VARIANT_DIR / "seed1" / "status.json", 10)
    assert status["state"] == "running"  # killed mid-run
    subprocess.run([sys.executable, "-m", "harness.cli", *args], check=True, capture_output=True)
    for seed in (0, 1):
        for kind in ("evals", "train"):
            whole = records(tmp_path / "whole" / VARIANT_DIR / f"seed{seed}", kind)
            pd.testing.assert_frame_equal(
                records(tmp_path / "killed" / VARIANT_DIR / f"seed{seed}", kind), whole
            )


def test_stopped_group_in_the_online_phase_resumes_with_the_same_records(dataset_dir, tmp_path, monkeypatch):
    from harness.run.online import ExplorerGroup

    flags = dict(steps=6, online_steps=14, online_warmup_steps=3, eval_interval=10, eval_episodes=1)
    assert main(stacked_args(dataset_dir, tmp_path / "whole", checkpoint_interval=10, **flags)) == 0
    original = ExplorerGroup.step

    def step_then_stop(self: ExplorerGroup) -> None:
        original(self)
        if self.explorers[0].buffer.size == 400 + 7:  # inside a chunk, between checkpoints
            train.request_stop()

    monkeypatch.setattr(ExplorerGroup, "step", step_then_stop)
    try:
        assert main(stacked_args(dataset_dir, tmp_path / "stopped", checkpoint_interval=10, **flags)) == 1
    finally:
        train.clear_stop()
    monkeypatch.setattr(ExplorerGroup, "step", original)
    assert main(stacked_args(dataset_dir, tmp_path / "stopped", checkpoint_interval=10, **flags)) == 0
    for seed in (0, 1):
        run_dir = tmp_path / "stopped" / VARIANT_DIR / f"seed{seed}"
        assert json.loads((run_dir / "status.json").read_text())["buffer_size"] == 400 + 14
        for kind in ("evals", "train"):
            whole = records(tmp_path / "whole" / VARIANT_DIR / f"seed{seed}", kind)
            pd.testing.assert_frame_equal(records(run_dir, kind), whole)
        assert "online_return" in records(run_dir, "train").columns


class NaNForSeedOne(FlowBC):
    """Flow BC whose loss becomes NaN for seed 1 from its 7th update on."""

    name = "test-nan-seed-one"

    def __init__(self, spec, config, *, device="cpu", seed=0) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        self.updates = 0

    def loss(self, batch):
        loss, metrics = super().loss(batch)
        self.updates += 1
        if self.updates >= 7:
            bad = torch.tensor([seed == 1 for seed in self.seeds]).reshape(loss.shape)
            loss = torch.where(bad, torch.full_like(loss, float("nan")), loss)
        return loss, {"bc_loss": loss}


@pytest.fixture
def nan_method():
    registry.register(NaNForSeedOne)
    yield NaNForSeedOne.name
    registry.unregister(NaNForSeedOne.name)


def test_a_diverged_seed_stops_and_the_others_finish(nan_method, dataset_dir, tmp_path):
    code = main(stacked_args(dataset_dir, tmp_path, seeds="0,1,2", method=nan_method, steps=30))
    assert code == 1  # not every seed is done
    base = tmp_path / "default" / nan_method / TASK
    diverged = json.loads((base / "seed1" / "status.json").read_text())
    assert diverged["state"] == "diverged" and diverged["step"] == 7 and diverged["metric"] == "bc_loss"
    assert not (base / "seed1" / "evals.parquet").exists()  # evaluations at 15 and 30 came after the NaN
    assert not (base / "seed1" / "ckpt.pt").exists()  # never a checkpoint past the NaN
    for seed in (0, 2):
        status = json.loads((base / f"seed{seed}" / "status.json").read_text())
        assert status["state"] == "done" and status["step"] == 30
        assert records(base / f"seed{seed}")["step"].tolist() == [15, 30]
        assert records(base / f"seed{seed}", "train")["step"].tolist() == [10, 20, 30]


def test_pending_group_checkpoints_are_completed_or_dropped(tmp_path):
    def save(seed: int, name: str, step: int) -> None:
        (tmp_path / f"seed{seed}").mkdir(exist_ok=True)
        torch.save({"step": step, "seed_group": [0, 1, 2]}, tmp_path / f"seed{seed}" / name)

    def steps() -> list[int]:
        return [torch.load(tmp_path / f"seed{s}" / "ckpt.pt", weights_only=True)["step"] for s in range(3)]

    for seed in range(3):  # the group's last commit
        save(seed, "ckpt.pt", 10)
    save(0, NEXT_CHECKPOINT, 20)  # killed while writing the next one: seeds 1 and 2 lack it
    resolve_pending_checkpoints(tmp_path / "seed0")
    assert steps() == [10, 10, 10] and not (tmp_path / "seed0" / NEXT_CHECKPOINT).exists()

    for seed in range(3):
        save(seed, NEXT_CHECKPOINT, 20)
    (tmp_path / "seed0" / NEXT_CHECKPOINT).replace(tmp_path / "seed0" / "ckpt.pt")  # killed while renaming
    resolve_pending_checkpoints(tmp_path / "seed2")
    assert steps() == [20, 20, 20] and not list(tmp_path.glob(f"seed*/{NEXT_CHECKPOINT}"))

    (tmp_path / "seed1" / NEXT_CHECKPOINT).write_bytes(b"half a file")
    resolve_pending_checkpoints(tmp_path / "seed1")
    assert steps() == [20, 20, 20] and not (tmp_path / "seed1" / NEXT_CHECKPOINT).exists()


def test_seeds_at_different_steps_are_refused(dataset_dir, tmp_path, capsys):
    train.request_stop()  # seed 3 stops with a checkpoint at step 1; seed 4 never started
    try:
        assert main(stacked_args(dataset_dir, tmp_path, seeds="3,", steps=20)) == 1
    finally:
        train.clear_stop()
    capsys.readouterr()
    assert main(stacked_args(dataset_dir, tmp_path, seeds="3,4", steps=20)) == 2
    assert "checkpoints at different steps ({3: 1, 4: 0})" in capsys.readouterr().err


def test_sweep_with_stacked_seeds_equals_flowarena_run_seeds(dataset_dir, tmp_path):
    sweep = ["sweep", "--name", "stacked", "--methods", "fql", "--suite", "smoke", "--tasks", TASK]
    sweep += ["--seeds", "2", "--seeds-per-process", "2", "--dataset-dir", str(dataset_dir)]
    sweep += ["--out", str(tmp_path), "--offline-steps", "20", "--eval-interval", "10"]
    sweep += ["--eval-episodes", "2", "--log-interval", "10", "--no-progress", "--poll", "0.5"]
    assert main(sweep) == 0
    assert main(stacked_args(dataset_dir, tmp_path / "run", steps=20)) == 0
    for seed in (0, 1):
        swept = tmp_path / "stacked" / "fql" / TASK / f"seed{seed}"
        alone = tmp_path / "run" / VARIANT_DIR / f"seed{seed}"
        for kind in ("evals", "train"):
            expected = records(alone, kind).drop(columns=["sweep"])
            pd.testing.assert_frame_equal(records(swept, kind).drop(columns=["sweep"]), expected)
    assert (
        "trained stacked with fql" in (tmp_path / "stacked" / "fql" / TASK / "seed1" / "run.log").read_text()
    )
