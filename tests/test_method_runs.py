"""Every built-in method end to end through `flowarena run`: a tiny offline run finishes with
evaluations in [0, 1], and a run stopped after its first step resumes to records equal to the
uninterrupted run's. (QAM's family and FBRAC have their own versions with per-method checks in
test_qam_runs.py; FQL and QGF in test_train.py and test_qgf.py.)"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from support_methods import builtin_methods
from test_qam_runs import records, run_dir

from harness.run import train

COVERED_ELSEWHERE = {"qam", "qam-fql", "qam-edit", "fbrac", "fql", "qgf"}
METHODS = [m for m in builtin_methods() if m not in COVERED_ELSEWHERE]


@pytest.mark.parametrize("method", METHODS)
def test_a_stopped_run_resumes_to_the_uninterrupted_records(flowarena, tmp_path, one_thread, method):
    assert flowarena(tmp_path / "whole", method=method, steps=20, eval_episodes=1) == 0
    whole = run_dir(tmp_path / "whole", method)
    status = json.loads((whole / "status.json").read_text())
    expected = records(whole)
    assert status["state"] == "done" and status["step"] == 20
    assert expected["evals"]["step"].tolist() == [10, 20]
    assert expected["evals"]["success"].between(0, 1).all()
    assert {"loss"} <= set(expected["train"].columns)

    train.request_stop()  # as a preemption signal handler would: checkpoint after step 1, then stop
    try:
        assert flowarena(tmp_path / "stopped", method=method, steps=20, eval_episodes=1) == 1
    finally:
        train.clear_stop()
    stopped = run_dir(tmp_path / "stopped", method)
    assert json.loads((stopped / "status.json").read_text())["checkpoint_step"] == 1
    assert flowarena(tmp_path / "stopped", method=method, steps=20, eval_episodes=1) == 0
    resumed = records(stopped)
    for name in ("evals", "train"):
        pd.testing.assert_frame_equal(resumed[name], expected[name])
