"""status.json's heartbeat (harness/run/heartbeat.py): with the heartbeat due at every step, the
step in status.json advances before the first checkpoint, an evaluation announces itself, records
are those of a run without heartbeats, and a stop between beats resumes identically; `flowarena
status` shows the heartbeat age of running runs and flags those silent for too long."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TASK

from harness.cli import main
from harness.run import heartbeat, records, train
from harness.sweep.files import HEARTBEAT_NAME

RUN_DIR = Path("default/fql") / TASK / "seed0"


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """status.json as read back after every write of a run (with `ckpt`: whether ckpt.pt existed)."""
    seen: list[dict] = []
    write_status = records.RunDir.write_status

    def spy(self: records.RunDir, state: str, **fields):
        status = write_status(self, state, **fields)
        seen.append({**json.loads(self.status_path.read_text()), "ckpt": self.ckpt_path.exists()})
        return status

    monkeypatch.setattr(records.RunDir, "write_status", spy)
    return seen


def comparable(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).drop(columns=["wall_time_s"])


def test_the_heartbeat_is_due_once_per_interval_of_its_clock() -> None:
    now = [0.0]
    beat = heartbeat.Heartbeat(60.0, clock=lambda: now[0])
    now[0] = 59.9
    assert not beat.due()
    now[0] = 60.0
    assert beat.due()
    beat.beat([], step=1, phase="offline")
    assert not beat.due()
    beat.expire()
    assert beat.due()


def test_status_step_advances_before_the_first_checkpoint(flowarena, tmp_path, writes, monkeypatch) -> None:
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.0)  # a beat after every step
    start = time.time()
    assert flowarena(tmp_path, steps=20, checkpoint_interval=20) == 0  # evaluations at 10 and 20
    beats = [w for w in writes if w.get("heartbeat_at") and not w["ckpt"]]
    training = [w["step"] for w in beats if w["activity"] == "training"]
    assert training == list(range(1, 20))
    assert [w["step"] for w in beats if w["activity"] == "evaluating"] == [10, 20]
    assert all(w["state"] == "running" and w["phase"] == "offline" for w in beats)
    assert all(start <= w["heartbeat_at"] <= time.time() for w in beats)
    final = json.loads((tmp_path / RUN_DIR / "status.json").read_text())
    assert final["state"] == "done" and final["step"] == 20 and "activity" not in final


def test_beats_change_no_record_and_a_stop_between_beats_resumes_identically(
    flowarena, tmp_path, writes, monkeypatch
) -> None:
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 1e9)  # only the evaluations' beats
    assert flowarena(tmp_path / "quiet", steps=20, eval_interval=20) == 0
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.0)
    beat = heartbeat.Heartbeat.beat

    def beat_then_stop_at_7(self, members, *, step, phase, activity="training"):
        beat(self, members, step=step, phase=phase, activity=activity)
        if step == 7:
            train.request_stop()  # as a preemption signal would, right after a beat

    monkeypatch.setattr(heartbeat.Heartbeat, "beat", beat_then_stop_at_7)
    try:
        assert flowarena(tmp_path / "beating", steps=20, eval_interval=20) == 1
    finally:
        train.clear_stop()
    stopped = json.loads((tmp_path / "beating" / RUN_DIR / "status.json").read_text())
    assert (stopped["state"], stopped["step"], stopped["checkpoint_step"]) == ("pending", 7, 7)
    assert flowarena(tmp_path / "beating", steps=20, eval_interval=20) == 0
    assert {w["step"] for w in writes if w.get("activity") == "training"} == set(range(1, 21))
    for name in ("evals.parquet", "train.parquet"):
        expected = comparable(tmp_path / "quiet" / RUN_DIR / name)
        pd.testing.assert_frame_equal(comparable(tmp_path / "beating" / RUN_DIR / name), expected)


def _running_sweep(tmp_path: Path, ages_s: dict[int, float]) -> Path:
    """A sweep whose runs (seed -> heartbeat age) are running elsewhere, each process alive by its
    sweep heartbeat file: only status.json's heartbeat tells them apart."""
    sweep_dir = tmp_path / "hb"
    entries = [
        {"method": "fql", "variant": "fql", "task": TASK, "seed": s, "run_dir": f"fql/{TASK}/seed{s}"}
        for s in ages_s
    ]
    records.write_json(sweep_dir / "sweep.json", {"runs": entries})
    for seed, age in ages_s.items():
        run_dir = sweep_dir / "fql" / TASK / f"seed{seed}"
        beat = time.time() - age
        status = {"state": "running", "step": 100 + seed, "phase": "offline", "activity": "training"}
        status.update(host=f"not-{socket.gethostname()}", pid=1, heartbeat_at=beat, updated_at=beat - 5)
        records.write_json(run_dir / "status.json", status)
        (run_dir / HEARTBEAT_NAME).touch()
    return sweep_dir


def test_status_shows_heartbeat_ages_and_flags_silent_runs(tmp_path, capsys) -> None:
    sweep_dir = _running_sweep(tmp_path, {0: 20 * 60, 1: 5})
    assert main(["status", str(sweep_dir)]) == 0
    text = capsys.readouterr().out
    assert "running 2  lost 0  stale 0" in text and "1 possibly hung" in text
    hung = re.search(
        rf"fql {TASK} seed0: step 100 \(offline, training\), heartbeat 20 min ago; POSSIBLY HUNG", text
    )
    alive = re.search(rf"fql {TASK} seed1: step 101 \(offline, training\), heartbeat \d s ago\n", text)
    assert hung and alive and text.index(hung.group()) < text.index(alive.group())  # the oldest first
    assert main(["status", str(sweep_dir), "--json"]) == 0
    rows = {row["seed"]: row for row in json.loads(capsys.readouterr().out)}
    assert [rows[s]["possibly_hung"] for s in (0, 1)] == [True, False]
    assert rows[0]["heartbeat_age_s"] == pytest.approx(1200, abs=5) and rows[1]["heartbeat_age_s"] < 30
    assert main(["status", str(sweep_dir), "--hung-after", "30"]) == 0
    assert "0 possibly hung" in capsys.readouterr().out
