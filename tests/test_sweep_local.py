"""Sweeps through the local executor, for real: a failing run is isolated, reported and retried
alone; a sweep's records equal `flowarena run`'s; collect is idempotent."""

from __future__ import annotations

import pandas as pd
import pytest
from sweep_support import (
    BUDGET,
    PROBE,
    TASK,
    activate_probe,
    attempts,
    local_reference,
    records_of,
    run_dir,
)

from algorithms import registry
from harness.cli import main


@pytest.fixture
def reference(dataset_dir, tmp_path_factory, monkeypatch):
    activate_probe(tmp_path_factory.mktemp("probe-site"), monkeypatch)
    yield local_reference(dataset_dir, tmp_path_factory.mktemp("sweep-reference"))
    registry.unregister(PROBE)


def test_failing_run_is_isolated_reported_and_retried_alone(reference):
    out = reference["out"]
    first, status_code, second = reference["codes"]
    first_out, status_out, second_out = reference["outputs"]
    (done_status, done_attempts), (failed_status, failed_attempts) = reference["after_first"].values()
    seed0, seed1 = run_dir(out, "ref", 0), run_dir(out, "ref", 1)

    assert first == 1, first_out  # not every run is done
    assert done_status["state"] == "done" and done_status["step"] == 20
    assert failed_status["state"] == "failed" and failed_status["step"] == 15
    assert failed_status["error"] == "RuntimeError: probe: seed 1 fails on purpose"
    assert len(done_attempts) == len(failed_attempts) == 1

    assert status_code == 0
    assert "done 1  diverged 0  failed 1" in status_out
    assert (
        f"{PROBE} {TASK} seed1: failed at step 15: RuntimeError: probe: seed 1 fails on purpose" in status_out
    )
    assert f"log: {seed1 / 'run.log'}" in status_out and "Traceback" not in status_out

    assert second == 0, second_out
    assert "running 1 run(s)" in second_out  # only the failed run was retried
    assert len(attempts(seed0)) == 1 and len(attempts(seed1)) == 2
    assert "from step 10" in (seed1 / "run.log").read_text()  # resumed from its checkpoint
    for path in (seed0, seed1):
        assert records_of(path)["step"].tolist() == [10, 20]
        assert records_of(path, "train")["step"].tolist() == [10, 20]


def test_sweep_records_equal_flowarena_run(reference, dataset_dir, tmp_path):
    for seed in (0, 1):
        args = ["run", "--method", PROBE, "--task", TASK, "--seed", str(seed), "--suite", "smoke"]
        args += ["--dataset-dir", str(dataset_dir), "--out", str(tmp_path), "--no-progress"]
        for key, value in BUDGET.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        assert main(args) == 0
        alone = tmp_path / "default" / PROBE / TASK / f"seed{seed}"
        swept = run_dir(reference["out"], "ref", seed)
        for kind in ("evals", "train"):
            pd.testing.assert_frame_equal(records_of(swept, kind), records_of(alone, kind))


def test_collect_merges_every_run_and_is_idempotent(reference, capsys):
    sweep = reference["out"] / "ref"
    assert main(["collect", str(sweep)]) == 0
    assert "4 evals row(s) from 2 run(s)" in capsys.readouterr().out
    first = (sweep / "evals.parquet").read_bytes()
    assert main(["collect", str(sweep)]) == 0
    assert (sweep / "evals.parquet").read_bytes() == first
    merged = pd.read_parquet(sweep / "evals.parquet")
    expected = pd.concat(
        [pd.read_parquet(run_dir(reference["out"], "ref", s) / "evals.parquet") for s in (0, 1)]
    )
    pd.testing.assert_frame_equal(merged, expected.reset_index(drop=True))
