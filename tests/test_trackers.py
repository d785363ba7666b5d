"""Experiment trackers (`--logger`, harness/run/trackers.py), with the real libraries: what
TensorBoard and W&B hold after a run, read back with their own readers, equals the parquet
records; a resumed run logs no step twice; a failing tracker costs the run nothing; a missing
package is one clear message and exit code 2."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TASK

from harness.cli import build_parser
from harness.errors import UserError
from harness.run.spec import Budget, RunSpec
from harness.run.trackers import TensorBoardTracker, tracker_points, wandb_configured
from harness.run.trainer import Trainer
from harness.sweep.cli import spec_from_args
from harness.sweep.job import run_payload
from harness.sweep.plan import make_plan

RUN_DIR = Path("default/fql") / TASK / "seed0"
# evaluations at steps 20 and 40, checkpoints at 20 and 40; one episode each: evaluation dominates
SCHEDULE = {
    "steps": 40,
    "eval_interval": 20,
    "checkpoint_interval": 20,
    "log_interval": 10,
    "eval_episodes": 1,
}


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (purged events left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def wandb_records(path: Path) -> list:
    """The Record messages of a .wandb transaction log: a 7-byte header (':W&B', magic, version),
    then 32 KiB blocks of chunks, each behind a 7-byte header (checksum, length, type: 1 full,
    2 first, 3 middle, 4 last), as in LevelDB's log format."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, found = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
    return found


def wandb_history(offline_run: Path) -> tuple[str, list[tuple[int, dict[str, float]]]]:
    """The run id and the (step, {key: value}) history rows of a W&B offline run directory."""
    (path,) = offline_run.glob("run-*.wandb")
    run_id, rows = "", []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            rows.append((record.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
    return run_id, rows


def expected_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the run's parquet records."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for kind in ("train", "evals"):
        rows = pd.read_parquet(run_dir / f"{kind}.parquet").to_dict("records")
        for step, scalars in tracker_points(kind, rows):
            for tag, value in scalars.items():
                expected.setdefault(tag, []).append((step, value))
    return expected


def interrupted_then_resumed(flowarena, out: Path, monkeypatch, logger: str) -> Path:
    """A run whose first attempt dies at its last checkpoint (step 40), after every row reached the
    records and the trackers; the second attempt resumes from the checkpoint at step 20 and logs
    steps 30 and 40 and evaluates step 40 again."""
    original = Trainer.checkpoint

    def checkpoint(self: Trainer) -> None:
        if self.step == 40:
            raise RuntimeError("killed at step 40")
        original(self)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "checkpoint", checkpoint)
        with pytest.raises(RuntimeError, match="killed"):
            flowarena(out, "--logger", logger, **SCHEDULE)
    assert flowarena(out, "--logger", logger, **SCHEDULE) == 0
    return out / RUN_DIR


def test_tensorboard_holds_the_records_once_after_a_resume(flowarena, tmp_path, monkeypatch, one_thread):
    run_dir = interrupted_then_resumed(flowarena, tmp_path, monkeypatch, "tensorboard")
    expected = expected_points(run_dir)
    assert expected["train/offline/loss"][-1][0] == 40 and len(expected["eval/offline/success"]) == 2
    got = tensorboard_scalars(run_dir / "tensorboard")
    assert set(got) == set(expected)
    for tag, points in expected.items():  # steps 30 and 40 once: the first attempt's are purged
        assert [step for step, _ in got[tag]] == [step for step, _ in points], tag
        assert [value for _, value in got[tag]] == pytest.approx([value for _, value in points], rel=1e-6)


def test_wandb_offline_run_holds_the_records_once_after_a_resume(
    flowarena, tmp_path, monkeypatch, one_thread
):
    for name in ("CACHE", "CONFIG", "DATA", "ARTIFACT"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / "wandb" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the run's files go to <run_dir>/wandb/
    run_dir = interrupted_then_resumed(flowarena, tmp_path / "out", monkeypatch, "wandb")
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2  # one per attempt
    histories = [wandb_history(path) for path in offline_runs]
    stored_id = json.loads((run_dir / "trackers.json").read_text())["wandb_id"]
    assert {run_id for run_id, _ in histories} == {stored_id}  # the resume continued the same run
    got: dict[str, list[tuple[int, float]]] = {}
    for _, rows in histories:
        for step, values in rows:
            for key, value in values.items():
                got.setdefault(key, []).append((step, value))
    expected = expected_points(run_dir)
    assert set(got) == set(expected)
    for tag, points in expected.items():  # the resume sent nothing the first attempt had sent
        assert [step for step, _ in got[tag]] == [step for step, _ in points], tag
        assert [value for _, value in got[tag]] == pytest.approx([value for _, value in points], rel=1e-6)


def test_a_failing_tracker_warns_once_and_the_run_and_its_records_go_on(
    flowarena, tmp_path, monkeypatch, capsys, one_thread
):
    def broken(self, points):
        raise OSError("disk full")

    monkeypatch.setattr(TensorBoardTracker, "log", broken)
    assert flowarena(tmp_path, "--logger", "tensorboard", eval_episodes=1) == 0
    assert capsys.readouterr().err.count("the tensorboard logger failed") == 1
    run_dir = tmp_path / RUN_DIR
    assert pd.read_parquet(run_dir / "evals.parquet")["step"].tolist() == [20, 40]
    assert pd.read_parquet(run_dir / "train.parquet")["step"].tolist() == [10, 20, 30, 40]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"


@pytest.mark.parametrize("logger", ["wandb", "tensorboard"])
def test_a_missing_tracker_package_is_one_message_and_exit_code_2(
    flowarena, tmp_path, monkeypatch, capsys, logger
):
    monkeypatch.setitem(sys.modules, logger, None)  # as if not installed
    assert flowarena(tmp_path, "--logger", logger) == 2
    assert f"pip install flowarena[{logger}]" in capsys.readouterr().err
    assert not (tmp_path / "default").exists()


def test_rows_become_tagged_scalars_at_their_step():
    keys = {"sweep": "s", "method": "fql", "variant": "fql", "task": TASK, "seed": 0, "wall_time_s": 1.5}
    train = [
        {**keys, "phase": "offline", "step": 5, "loss": 0.5, "bc_loss": 0.25},
        {**keys, "phase": "online", "step": 9, "loss": 0.1, "online_return": float("nan"), "buffer_size": 7},
    ]
    assert tracker_points("train", train) == [
        (5, {"train/offline/loss": 0.5, "train/offline/bc_loss": 0.25}),
        (9, {"train/online/loss": 0.1, "train/online/buffer_size": 7.0}),  # NaN left out
    ]
    evals = [
        {**keys, "domain": "d", "phase": "online", "step": 9, "success": 0.5, "return": -3.0,
         "episode_length": 40.0, "n_episodes": 2, "eval_params": label}
        for label in ("", "guidance_weight=0.01")
    ]  # fmt: skip
    assert tracker_points("evals", evals) == [
        (9, {"eval/online/success": 0.5, "eval/online/return": -3.0, "eval/online/episode_length": 40.0}),
        (
            9,
            {
                "eval/online/guidance_weight=0.01/success": 0.5,
                "eval/online/guidance_weight=0.01/return": -3.0,
                "eval/online/guidance_weight=0.01/episode_length": 40.0,
            },
        ),
    ]


def test_wandb_is_offline_unless_the_user_configured_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    env = {"PATH": "/usr/bin"}
    assert not wandb_configured(env)
    assert wandb_configured({**env, "WANDB_API_KEY": "x" * 40})
    assert wandb_configured({**env, "WANDB_MODE": "online"})
    settings = tmp_path / ".config" / "wandb" / "settings"  # what `wandb online` / `wandb offline` write
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nmode = online\n")
    assert wandb_configured(env)
    settings.write_text("[default]\nbase_url = https://api.wandb.ai\n")
    assert not wandb_configured(env)
    netrc = tmp_path / ".netrc"  # what `wandb login` writes
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_configured(env)


def test_sweep_passes_its_loggers_to_every_run(tmp_path, capsys):
    argv = ["sweep", "--name", "t", "--suite", "smoke", "--methods", "fql", "--tasks", TASK, "--seeds", "2"]
    argv += ["--out", str(tmp_path)]
    loggers = ["--logger", "tensorboard", "--logger", "wandb", "--logger", "tensorboard"]
    plan = make_plan(spec_from_args(build_parser().parse_args([*argv, *loggers])))
    assert [run.spec.loggers for run in plan.runs] == [["tensorboard", "wandb"]] * 2
    payload = run_payload(plan.runs[0])["spec"]  # what a sweep's worker process rebuilds its run from
    assert RunSpec(**{**payload, "budget": Budget(**payload["budget"])}).loggers == ["tensorboard", "wandb"]
    plan = make_plan(spec_from_args(build_parser().parse_args([*argv, "--logger", "none"])))
    assert [run.spec.loggers for run in plan.runs] == [[], []]
    with pytest.raises(UserError, match="--logger none"):
        spec_from_args(build_parser().parse_args([*argv, "--logger", "none", "--logger", "wandb"]))
    with pytest.raises(SystemExit):  # argparse: invalid choice, exit code 2
        build_parser().parse_args([*argv, "--logger", "mlflow"])
    spec_file = tmp_path / "sweep.toml"
    spec_file.write_text('loggers = ["wandb"]\n')
    spec = spec_from_args(build_parser().parse_args([*argv, str(spec_file)]))
    assert spec.loggers == ["wandb"]
    spec_file.write_text('loggers = "wandb"\n')
    with pytest.raises(UserError, match="loggers must be an array"):
        spec_from_args(build_parser().parse_args([*argv, str(spec_file)]))
