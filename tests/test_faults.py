"""The faults of a shared cluster (docs/reliability.md): a write refused at each write site (full
disk, quota, read-only mount, permissions), on a real tmpfs where the test runs as root and by
injected OSErrors everywhere; a damaged checkpoint, parquet record or status.json; duplicated rows;
the same run launched twice. Each ends with one message and the right exit code, an honest
status.json, the rows written before intact, and the same command resuming to the records of an
uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import TASK

from harness.cli import main
from harness.errors import STORAGE_ERRNOS, StorageError
from harness.run import heartbeat, lock, records
from harness.run.trackers import Trackers

RUN_DIR = Path("default/fql") / TASK / "seed0"
# 20 steps: train rows every 5, evaluations (one episode) at 10 and 20, checkpoints at 5, 10, 15, 20
FLAGS = {"steps": 20, "eval_interval": 10, "eval_episodes": 1, "log_interval": 5, "checkpoint_interval": 5}
CKPT_BYTES = 560_000  # the smoke suite's FQL checkpoint is about 554 KB


def comparable(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).drop(columns=["wall_time_s"]).reset_index(drop=True)


def assert_same_records(run_dir: Path, reference: Path, *, up_to: int | None = None) -> None:
    """The run's rows equal the reference's (those up to step `up_to`, when given)."""
    for name in ("evals.parquet", "train.parquet"):
        expected = comparable(reference / name)
        if up_to is not None:
            expected = expected[expected["step"] <= up_to].reset_index(drop=True)
        pd.testing.assert_frame_equal(comparable(run_dir / name), expected)


def assert_one_message(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("flowarena: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(needle in lines[0] for needle in needles), lines[0]


@pytest.fixture(autouse=True)
def steady(one_thread, monkeypatch: pytest.MonkeyPatch) -> None:
    """One torch thread (tiny networks), and no timed heartbeat: the nth status.json write is the
    same write on a slow machine."""
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 1e9)


@pytest.fixture(scope="module")
def whole(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of an uninterrupted run: the records every fault must end with."""
    out = tmp_path_factory.mktemp("whole")
    assert main(run_args_of(dataset_dir, out)) == 0
    return out / RUN_DIR


def run_args_of(dataset_dir: Path, out: Path) -> list[str]:
    from conftest import run_args

    return run_args(dataset_dir, out, **FLAGS)


class FailWrite:
    """fail_write(name, code, nth): the nth write (from 1) of a file called `name` raises
    OSError(code) inside records.atomic_write, after its temporary file exists; returns the count
    of such writes so far (a list of one). `heal()`: the cause is gone."""

    def __init__(self) -> None:
        self.patch = pytest.MonkeyPatch()

    def __call__(self, name: str, code: int, nth: int = 1) -> list[int]:
        seen = [0]
        atomic_write = records.atomic_write

        def faulty(path: Path, write):
            if path.name == name:
                seen[0] += 1
                if seen[0] == nth:

                    def refuse(tmp: Path) -> None:
                        raise OSError(code, os.strerror(code), str(tmp))

                    return atomic_write(path, refuse)
            return atomic_write(path, write)

        self.patch.setattr(records, "atomic_write", faulty)
        return seen

    def heal(self) -> None:
        self.patch.undo()


@pytest.fixture
def fail_write() -> Iterator[FailWrite]:
    faults = FailWrite()
    yield faults
    faults.heal()


# --- refused writes, injected at each write site ------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "code", "nth"),
    [
        ("spec.json", errno.EDQUOT, 1),
        ("status.json", errno.EROFS, 4),  # a heartbeat or checkpoint's status write mid-run
        ("evals.parquet", errno.ENOSPC, 1),
        ("train.parquet", errno.EACCES, 2),
        ("ckpt.next.pt", errno.ENOSPC, 3),
    ],
)
def test_a_refused_write_stops_the_run_cleanly_and_the_rerun_completes_it(
    dataset_dir, tmp_path, whole, fail_write, capsys, monkeypatch, name, code, nth
) -> None:
    seen = fail_write(name, code, nth)
    args = run_args_of(dataset_dir, tmp_path)
    assert main(args) == 1
    assert seen[0] >= nth
    reason = {
        errno.EDQUOT: "quota",
        errno.EROFS: "read-only",
        errno.ENOSPC: "no space",
        errno.EACCES: "permission",
    }
    assert_one_message(capsys.readouterr().err, name, reason[code], errno.errorcode[code])
    run_dir = tmp_path / RUN_DIR
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and name in status["error"] and "traceback" not in status
    assert not list(run_dir.glob(".*.tmp")), "a refused write left its temporary file"
    if (run_dir / "evals.parquet").exists():  # every row written before the fault is intact
        last = (
            int(pd.read_parquet(run_dir / "train.parquet")["step"].max())
            if (run_dir / "train.parquet").exists()
            else 0
        )
        assert_same_records(run_dir, whole, up_to=max(last, status["step"]))
    fail_write.heal()  # the cause is gone
    assert main(args) == 0
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert_same_records(run_dir, whole)


def test_each_cause_is_named_and_the_target_is_untouched(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    records.write_json(target, {"state": "running"})
    for code, words in [
        (errno.ENOSPC, "no space"),
        (errno.EDQUOT, "quota"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission"),
    ]:

        def refuse(tmp: Path, code: int = code) -> None:
            tmp.write_text("half")
            raise OSError(code, os.strerror(code), str(tmp))

        with pytest.raises(StorageError) as caught:
            records.atomic_write(target, refuse)
        assert str(caught.value) == f"cannot write {target}: {STORAGE_ERRNOS[code]} ({errno.errorcode[code]})"
        assert words in str(caught.value) and caught.value.__cause__ is None
        assert json.loads(target.read_text()) == {"state": "running"}
        assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
    with pytest.raises(ValueError):  # any other error is not a storage fault and keeps its type
        records.atomic_write(target, lambda tmp: (_ for _ in ()).throw(ValueError("bug")))


def test_a_tracker_whose_write_is_refused_stops_the_run(tmp_path: Path) -> None:
    class FullDisk:
        name = "tensorboard"

        def open(self, resume_step):
            pass

        def log(self, points):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "events"))

        def close(self, failed):
            raise OSError(errno.ENOSPC, "No space left on device")

    trackers = Trackers([], tmp_path)
    trackers.trackers = [FullDisk()]
    with pytest.raises(StorageError, match="events: no space left"):
        trackers.log_rows("train", [{"phase": "offline", "step": 1, "loss": 1.0}])
    trackers.close()  # closing after the fault reports and goes on
    assert trackers.trackers == []


# --- real filesystems (root: a small tmpfs) ------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[tuple[Path, callable]]:
    """A small tmpfs mounted at tmp_path/mnt, and remount(options); skipped where mounting is refused."""
    point = tmp_path / "mnt"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root); the injected faults above cover the rest")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"this container refuses mount -t tmpfs ({mounted.stderr.strip()})")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)

    try:
        yield point, remount
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_disk_fails_the_run_and_freed_space_resumes_it(dataset_dir, whole, tmpfs, capsys) -> None:
    out, remount = tmpfs  # 1400 KB: two checkpoints fit, the third (beside ckpt.pt and ckpt.prev.pt) does not
    args = run_args_of(dataset_dir, out)
    assert main(args) == 1
    assert_one_message(capsys.readouterr().err, "ckpt.next.pt", "no space left", "ENOSPC")
    run_dir = out / RUN_DIR
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "ENOSPC" in status["error"]
    assert status["checkpoint_step"] == 10 and status["step"] == 15
    assert_same_records(run_dir, whole, up_to=15)  # the train row of step 15 was flushed before the save
    remount("size=4m")
    assert main(args) == 0
    assert_same_records(run_dir, whole)


def test_a_read_only_mount_is_refused_before_any_work(dataset_dir, tmpfs, capsys) -> None:
    out, remount = tmpfs
    remount("ro")
    assert main(run_args_of(dataset_dir, out)) == 2
    assert_one_message(
        capsys.readouterr().err, str(out), "read-only file system (EROFS)", "nothing was written"
    )
    assert list(out.iterdir()) == []


# --- damaged files ---------------------------------------------------------------------------------------
def test_a_damaged_checkpoint_falls_back_and_none_readable_is_corrupt(
    dataset_dir, tmp_path, whole, fail_write, capsys, monkeypatch
) -> None:
    fail_write("ckpt.next.pt", errno.ENOSPC, 4)  # stops at step 20 with checkpoints at 15 and 10
    args = run_args_of(dataset_dir, tmp_path / "a")
    assert main(args) == 1
    fail_write.heal()
    run_dir = tmp_path / "a" / RUN_DIR
    assert {p.name for p in run_dir.glob("ckpt*")} == {"ckpt.pt", "ckpt.prev.pt"}
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    capsys.readouterr()

    ckpt = run_dir / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated, as by a dying node
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(ckpt) in warnings[0] and "previous checkpoint" in warnings[0]
    assert "(step 10)" in warnings[0]
    assert_same_records(run_dir, whole)

    other = tmp_path / "b" / RUN_DIR
    for name in ("ckpt.pt", "ckpt.prev.pt"):
        (other / name).write_bytes(b"not a checkpoint")
    assert main(run_args_of(dataset_dir, tmp_path / "b")) == 2
    assert_one_message(capsys.readouterr().err, "no readable checkpoint", "ckpt.prev.pt")
    status = json.loads((other / "status.json").read_text())
    assert status["state"] == "failed" and status["corrupt"] == str(other / "ckpt.pt")
    assert main(["status", str(tmp_path / "b" / "default")]) == 0
    report = capsys.readouterr().out
    assert "corrupt 1" in report and f"fql {TASK} seed0: {other / 'ckpt.pt'}" in report
    assert main(["status", str(tmp_path / "b" / "default"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["condition"] == "corrupt"


def test_stacked_seeds_fall_back_together(dataset_dir, tmp_path, fail_write, capsys) -> None:
    def stacked(out: Path) -> list[str]:
        args = run_args_of(dataset_dir, out)
        at = args.index("--seed")
        return [*args[:at], "--seeds", "0,1", *args[at + 2 :]]

    assert main(stacked(tmp_path / "whole")) == 0
    fail_write("ckpt.next.pt", errno.ENOSPC, 7)  # seed 0's checkpoint at step 20: both keep 15 and 10
    assert main(stacked(tmp_path / "cut")) == 1
    fail_write.heal()
    ckpt = tmp_path / "cut" / RUN_DIR.parent / "seed1" / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    capsys.readouterr()
    assert main(stacked(tmp_path / "cut")) == 0
    assert "resuming from the previous checkpoint" in capsys.readouterr().err
    for seed in ("seed0", "seed1"):
        run = RUN_DIR.parent / seed
        assert_same_records(tmp_path / "cut" / run, tmp_path / "whole" / run)


@pytest.fixture
def sweep(whole: Path, tmp_path: Path) -> Path:
    """A sweep of two finished runs, copies of the uninterrupted run (seeds 0 and 1)."""
    for seed in (0, 1):
        run_dir = tmp_path / "s" / RUN_DIR.parent / f"seed{seed}"
        shutil.copytree(whole, run_dir)
        records.write_parquet(
            run_dir / "evals.parquet", pd.read_parquet(whole / "evals.parquet").assign(seed=seed)
        )
        spec = json.loads((run_dir / "spec.json").read_text())
        records.write_json(run_dir / "spec.json", {**spec, "seed": seed, "out": str(tmp_path / "s")})
    return tmp_path / "s" / "default"


def test_damaged_records_are_named_where_they_are_read(dataset_dir, sweep, capsys) -> None:
    evals = sweep / "fql" / TASK / "seed1" / "evals.parquet"
    evals.write_bytes(evals.read_bytes()[:100])
    status = sweep / "fql" / TASK / "seed0" / "status.json"
    status.write_text('{"state": "do')
    assert main(["collect", str(sweep)]) == 2
    assert_one_message(capsys.readouterr().err, "1 unreadable evals file")
    assert not (sweep / "evals.parquet").exists()
    assert main(["leaderboard", str(sweep), "--no-progress"]) == 2
    assert str(evals) in capsys.readouterr().err
    assert main(["status", str(sweep)]) == 0
    assert f"fql {TASK} seed0: {status}" in capsys.readouterr().out
    assert main([*run_args_of(dataset_dir, sweep.parent), "--seed", "1"]) == 0  # done: nothing to read
    (sweep / "fql" / TASK / "seed1" / "status.json").write_text(json.dumps({"state": "pending", "step": 0}))
    assert main([*run_args_of(dataset_dir, sweep.parent), "--seed", "1"]) == 2
    assert_one_message(capsys.readouterr().err, str(evals), "not a readable parquet file")


def test_duplicated_rows_are_counted_once_and_reported(sweep, capsys) -> None:
    evals = sweep / "fql" / TASK / "seed1" / "evals.parquet"
    rows = pd.read_parquet(evals)
    records.write_parquet(evals, pd.concat([rows, rows.iloc[[1]]], ignore_index=True))  # step 20 twice
    assert main(["leaderboard", str(sweep), "--no-progress"]) == 2
    assert "duplicated eval rows" in capsys.readouterr().err
    assert main(["collect", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "1 duplicated row(s) dropped" in out and f"fql {TASK} seed1 offline step 20" in out
    collected = pd.read_parquet(sweep / "evals.parquet")
    assert len(collected) == 4 and not collected.duplicated(["seed", "phase", "step", "eval_params"]).any()
    assert main(["leaderboard", str(sweep), "--no-progress", "--format", "csv"]) == 0


def test_collect_on_a_read_only_or_full_disk(sweep, fail_write, capsys, monkeypatch) -> None:
    fail_write("evals.parquet", errno.ENOSPC)
    assert main(["collect", str(sweep)]) == 1
    assert_one_message(capsys.readouterr().err, str(sweep / "evals.parquet"), "no space left")
    fail_write.heal()

    def read_only(*args, **kwargs):  # the probe of a read-only sweep directory
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    with monkeypatch.context() as patch:
        patch.setattr(records.tempfile, "NamedTemporaryFile", read_only)
        assert main(["collect", str(sweep)]) == 2
    assert_one_message(capsys.readouterr().err, "read-only file system (EROFS)", "nothing was written")
    assert not (sweep / "evals.parquet").exists()


# --- the same run launched twice ---------------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from harness.run.lock import run_lock
with run_lock(Path(sys.argv[1])) as held:
    print("held" if held else "refused", flush=True)
    time.sleep(600)
"""


def test_a_second_launch_is_refused_and_a_dead_holder_is_no_obstacle(
    dataset_dir, tmp_path, whole, capsys, monkeypatch
) -> None:
    run_dir = tmp_path / RUN_DIR
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(lock, "LOCK_WAIT_S", 1.0)
        assert main(run_args_of(dataset_dir, tmp_path)) == 2
        assert_one_message(
            capsys.readouterr().err, "another process", f"pid {holder.pid}", os.uname().nodename
        )
        assert [p.name for p in run_dir.iterdir()] == [".lock"]  # nothing written
    finally:
        holder.kill()  # kill -9: the OS drops its lock
        holder.wait()
    assert main(run_args_of(dataset_dir, tmp_path)) == 0
    assert_same_records(run_dir, whole)
    assert f"pid {os.getpid()}" in (run_dir / ".lock").read_text()


def test_a_lock_only_directory_from_bad_input_is_removed(dataset_dir, tmp_path, capsys) -> None:
    missing = tmp_path / f"no-data-{uuid.uuid4().hex}"
    args = run_args_of(missing, tmp_path / "out")
    assert main(args) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # the directories made for the lock alone are gone


JOB = """
import sys, threading
from pathlib import Path
from harness.run import lock
from harness.sweep import job
lock.LOCK_WAIT_S = 0.5
run_dir = Path(sys.argv[1])
payload = {"runs": [{"run_dir": str(run_dir), "label": "fql seed0", "spec": {}}]}
sys.exit(job._locked_train(None, payload, [run_dir], threading.Event()))  # nothing is trained
"""


def test_a_sweep_job_leaves_a_locked_run_to_its_holder(tmp_path) -> None:
    from harness.sweep import job

    run_dir, root = tmp_path / RUN_DIR, Path(__file__).parent.parent
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, "-c", JOB, str(run_dir)], capture_output=True, text=True, cwd=root
        )
        assert second.returncode == job.EXIT_LOCKED, second.stderr
        assert f"pid {holder.pid}" in second.stdout
        assert [p.name for p in run_dir.iterdir()] == [".lock"]
    finally:
        holder.kill()
        holder.wait()
