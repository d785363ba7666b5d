"""A sweep's runs and their state, read from each run's status.json only (never from Slurm):
`lost` (status says running, but the process is gone) and `stale` (silent for too long) added
to the recorded states; running runs with the age of their training loop's heartbeat (status.json's
`heartbeat_at`, harness/run/heartbeat.py), `possibly hung` when it is older than the hung
threshold; `corrupt` for a run that needs a person: no readable checkpoint (status.json's
`corrupt`, written by the run) or an unreadable status.json; `flowarena status` in words or JSON."""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.run import records
from harness.sweep.files import HEARTBEAT_NAME, LOG_NAME, read_sweep_file

TERMINAL = ("done", "diverged", "failed", "corrupt")  # a sweep waits for nothing more from these
DEFAULT_STALE_MIN = 30.0
# A training loop rewrites status.json every 30 s (harness/run/heartbeat.py) and at the start of each
# evaluation: a running run silent for this long is stuck in one step or in one evaluation.
DEFAULT_HUNG_MIN = 10.0
MAX_RUNNING_LINES = 20  # running runs listed by `flowarena status`, oldest heartbeat first


@dataclass
class RunStatus:
    """One run as its status.json describes it; `condition` adds `lost` (status says running, but its
    process is gone) and `stale` (running, but silent for longer than the stale threshold)."""

    variant: str
    method: str
    task: str
    seed: int
    run_dir: Path
    planned: bool
    state: str
    condition: str
    status: dict[str, Any]

    @property
    def log(self) -> Path:
        return self.run_dir / LOG_NAME

    @property
    def label(self) -> str:
        return f"{self.variant} {self.task} seed{self.seed}"


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def last_seen(run_dir: Path, status: dict[str, Any]) -> float:
    heartbeat = run_dir / HEARTBEAT_NAME
    beat = heartbeat.stat().st_mtime if heartbeat.exists() else 0.0
    return max(float(status.get("updated_at") or 0.0), beat)


def read_run_status(run_dir: Path) -> dict[str, Any]:
    """A run's status.json; an unreadable one reads as a failed run with `corrupt` set to its path."""
    try:
        return records.RunDir(run_dir).read_status()
    except UserError as error:
        path = str(Path(run_dir) / "status.json")
        return {"state": "failed", "corrupt": path, "error": str(error)}


def condition_of(
    run_dir: Path, status: dict[str, Any], *, stale_after_s: float, now: float | None = None
) -> str:
    state = status.get("state", "pending")
    if state == "failed" and status.get("corrupt"):
        return "corrupt"
    if state != "running":
        return state
    if status.get("host") == socket.gethostname() and not pid_alive(status.get("pid")):
        return "lost"
    if (now or time.time()) - last_seen(run_dir, status) > stale_after_s:
        return "stale"
    return "running"


def sweep_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The runs sweep.json planned, then any other run directory found under the sweep."""
    sweep_dir = Path(sweep_dir)
    runs = {}
    for entry in read_sweep_file(sweep_dir).get("runs", []):
        runs[str(sweep_dir / entry["run_dir"])] = {**entry, "planned": True}
    for status_or_spec in sorted(sweep_dir.glob("*/*/seed*/s*.json")):
        run_dir = status_or_spec.parent
        if status_or_spec.name not in ("spec.json", "status.json") or str(run_dir) in runs:
            continue
        seed = run_dir.name.removeprefix("seed")
        if seed.isdigit():
            variant = run_dir.parent.parent.name
            runs[str(run_dir)] = {
                "method": variant.split("[")[0],
                "variant": variant,
                "task": run_dir.parent.name,
                "seed": int(seed),
                "planned": False,
            }
    return [{**entry, "run_dir": Path(path)} for path, entry in runs.items()]


def sweep_status(sweep_dir: Path, *, stale_after_s: float = DEFAULT_STALE_MIN * 60) -> list[RunStatus]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a sweep directory (expected OUT/SWEEP, e.g. results/my-sweep)")
    now = time.time()
    statuses = []
    for entry in sweep_runs(sweep_dir):
        run_dir = entry["run_dir"]
        status = read_run_status(run_dir) if (run_dir / "status.json").exists() else {}
        statuses.append(
            RunStatus(
                variant=entry["variant"],
                method=entry["method"],
                task=entry["task"],
                seed=int(entry["seed"]),
                run_dir=run_dir,
                planned=entry["planned"],
                state=status.get("state", "pending"),
                condition=condition_of(run_dir, status, stale_after_s=stale_after_s, now=now),
                status=status,
            )
        )
    return statuses


CONDITIONS = ("done", "diverged", "failed", "running", "lost", "stale", "pending", "corrupt")


def heartbeat_age_s(status: dict[str, Any], now: float) -> float | None:
    """Seconds since the run's training loop last wrote status.json (its heartbeat, or a later
    checkpoint); None when it never did."""
    times = [float(t) for t in (status.get("heartbeat_at"), status.get("updated_at")) if t]
    return max(now - max(times), 0.0) if times else None


def possibly_hung(s: RunStatus, hung_after_s: float, now: float) -> bool:
    """Running, its process not known to be gone, and no heartbeat for longer than `hung_after_s`."""
    age = heartbeat_age_s(s.status, now)
    return s.condition == "running" and age is not None and age > hung_after_s


def _running_lines(statuses: list[RunStatus], hung_after_s: float, now: float) -> list[str]:
    running = [s for s in statuses if s.condition == "running"]
    if not running:
        return []
    running.sort(key=lambda s: -(heartbeat_age_s(s.status, now) or 0.0))  # the oldest heartbeat first
    hung = sum(possibly_hung(s, hung_after_s, now) for s in running)
    shown = running[: max(MAX_RUNNING_LINES, hung)]
    lines = [
        f"running: {len(running)} run(s) with their step and heartbeat age, {hung} possibly hung (no "
        f"heartbeat from the training loop for over {hung_after_s / 60:g} min):"
    ]
    for s in shown:
        age = heartbeat_age_s(s.status, now)
        doing = ", ".join(str(s.status[k]) for k in ("phase", "activity") if s.status.get(k))
        text = f"  {s.label}: step {s.status.get('step', 0)}" + (f" ({doing})" if doing else "")
        text += f", heartbeat {_age_text(age)}" if age is not None else ", no heartbeat yet"
        lines.append(
            text + (f"; POSSIBLY HUNG, log: {_log_text(s)}" if possibly_hung(s, hung_after_s, now) else "")
        )
    if len(running) > len(shown):
        lines.append(f"  ... and {len(running) - len(shown)} more (`--json` lists every run)")
    if hung:
        lines.append(
            "a possibly hung run is stuck in one step or one evaluation (its log may say where); stop its "
            "process and rerun to resume it from its last checkpoint"
        )
    return lines


def _age_text(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def format_status(
    sweep_dir: Path,
    statuses: list[RunStatus],
    *,
    stale_after_s: float,
    hung_after_s: float = DEFAULT_HUNG_MIN * 60,
) -> str:
    counts = Counter(s.condition for s in statuses)
    lines = [
        f"sweep {sweep_dir}: {len(statuses)} run(s)",
        "  " + "  ".join(f"{c} {counts.get(c, 0)}" for c in CONDITIONS),
    ]
    failed = [s for s in statuses if s.condition in ("failed", "diverged")]
    if failed:
        lines.append("failed or diverged:")
        for s in failed:
            error = str(s.status.get("error") or "(no error recorded)").strip().splitlines() or [""]
            lines.append(f"  {s.label}: {s.condition} at step {s.status.get('step', 0)}: {error[0]}")
            lines.append(f"    log: {_log_text(s)}")
    corrupt = [s for s in statuses if s.condition == "corrupt"]
    if corrupt:
        lines.append("corrupt (nothing readable to resume from: a person must decide; the records stay):")
        for s in corrupt:
            lines += [f"  {s.label}: {s.status['corrupt']}", f"    {_first_line(s.status.get('error'))}"]
    lost = [s for s in statuses if s.condition in ("lost", "stale")]
    if lost:
        lines.append(
            f"lost or stale (status says running, but the process is gone or silent for over "
            f"{stale_after_s / 60:g} min):"
        )
        for s in lost:
            lines.append(f"  {s.label}: {_lost_text(s)}")
            lines.append(f"    log: {_log_text(s)}")
    lines += _running_lines(statuses, hung_after_s, time.time())
    unfinished = [s for s in statuses if s.condition not in ("done", "diverged", "running", "corrupt")]
    if unfinished:
        lines.append(
            "rerun the sweep (the same `flowarena sweep` command) to retry failed runs and resume the others "
            "from their checkpoints; done and diverged runs are skipped"
        )
    return "\n".join(lines)


def _first_line(text: Any) -> str:
    return (str(text or "").strip().splitlines() or [""])[0]


def _log_text(s: RunStatus) -> str:
    return str(s.log) if s.log.exists() else f"{s.log} (absent: not started by `flowarena sweep`)"


def _lost_text(s: RunStatus) -> str:
    status = s.status
    ago = (time.time() - last_seen(s.run_dir, status)) / 60
    where = f"host {status.get('host')} pid {status.get('pid')}"
    gone = " (not alive)" if s.condition == "lost" else ""
    checkpoint = status.get("checkpoint_step")
    resume = f", resumes from checkpoint step {checkpoint}" if checkpoint else ", restarts from step 0"
    return f"step {status.get('step', 0)}{resume}; last sign of life {ago:.0f} min ago on {where}{gone}"


def status_json(
    statuses: list[RunStatus], *, hung_after_s: float = DEFAULT_HUNG_MIN * 60
) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "variant": s.variant,
            "method": s.method,
            "task": s.task,
            "seed": s.seed,
            "run_dir": str(s.run_dir),
            "planned": s.planned,
            "state": s.state,
            "condition": s.condition,
            "step": s.status.get("step", 0),
            "checkpoint_step": s.status.get("checkpoint_step"),
            "error": s.status.get("error"),
            "corrupt": s.status.get("corrupt"),
            "log": str(s.log) if s.log.exists() else None,
            "phase": s.status.get("phase"),
            "activity": s.status.get("activity"),
            "heartbeat_at": s.status.get("heartbeat_at"),
            "heartbeat_age_s": heartbeat_age_s(s.status, now) if s.condition == "running" else None,
            "possibly_hung": possibly_hung(s, hung_after_s, now),
        }
        for s in statuses
    ]
