"""Experiment trackers: TensorBoard and Weights & Biases (`--logger`). Every row a run writes to
its parquet records (harness/run/records.py) is also sent to the trackers its spec names, as
scalars at the row's step (NaN values left out): a train row's metrics as
`train/<phase>/<metric>`, an evals row's success, return and episode_length as
`eval/<phase>/<metric>`, or `eval/<phase>/<eval_params>/<metric>` for a labelled evaluation
setting (a method that declares evaluation parameters).

The records stay the source of truth: a tracker that fails is reported once and then left out;
the run and its records go on. A write the filesystem refuses (full disk or quota, read-only
mount, permissions) stops the run as a refused records write does (harness/errors.py). A resumed run does not log twice what it logged before: the
TensorBoard writer purges the events after the checkpoint it resumes from (`purge_step`), and
the W&B run (its id kept in <run_dir>/trackers.json) resumes and skips the steps it already
logged. A run that restarts from step 0 starts a new W&B run.

W&B runs offline, into <run_dir>/wandb/ (`wandb sync` uploads them later), unless the user has
configured W&B (`wandb_configured`): then its own settings decide."""

from __future__ import annotations

import configparser
import importlib
import math
import netrc
import numbers
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from harness.errors import StorageError, UserError, is_storage_fault
from harness.progress import say
from harness.run import records

if TYPE_CHECKING:
    from harness.run.spec import ResolvedRun

MODULES = {"tensorboard": ("tensorboard", "torch.utils.tensorboard"), "wandb": ("wandb",)}
STATE_FILE = "trackers.json"  # the W&B run id and the last step sent to it
TENSORBOARD_DIR = "tensorboard"
EVAL_METRICS = ("success", "return", "episode_length")
KEY_COLUMNS = {"sweep", "method", "variant", "task", "domain", "seed", "phase", "step", "wall_time_s"}
WANDB_ENV = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED")
Point = tuple[int, dict[str, float]]


def check_installed(names: Sequence[str]) -> None:
    """UserError (exit code 2) naming the install command for a tracker whose package is missing."""
    for name in names:
        for module in MODULES[name]:
            try:
                importlib.import_module(module)
            except Exception as error:
                raise UserError(
                    f"--logger {name} needs the {name} package, which does not import here "
                    f"({type(error).__name__}: {error}); pip install flowarena[{name}]"
                ) from None


def tracker_points(kind: str, rows: Iterable[Mapping[str, Any]]) -> list[Point]:
    """The scalars a tracker logs for records rows of `kind` (train or evals): (step, {tag: value})
    per row, in step order."""
    points = []
    for row in rows:
        phase = row["phase"]
        if kind == "evals":
            label = row.get("eval_params") or ""
            prefix = f"eval/{phase}/{label}/" if label else f"eval/{phase}/"
            values = {prefix + name: row[name] for name in EVAL_METRICS}
        else:
            values = {f"train/{phase}/{k}": v for k, v in row.items() if k not in KEY_COLUMNS}
        scalars = {tag: float(v) for tag, v in values.items() if _finite_number(v)}
        points.append((int(row["step"]), scalars))
    return sorted(points, key=lambda point: point[0])


def _finite_number(value: Any) -> bool:
    """A number a tracker can plot: NaN (an online mean over no finished episode) is left out."""
    return isinstance(value, numbers.Real) and math.isfinite(value)


def wandb_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the user has set W&B up: WANDB_MODE, WANDB_API_KEY or WANDB_DISABLED in the
    environment, a `mode` in a W&B settings file (what `wandb offline` / `wandb online` write:
    $WANDB_CONFIG_DIR/settings or ~/.config/wandb/settings, and ./wandb/settings or
    $WANDB_DIR/wandb/settings), or a login (`wandb login`: an entry for the W&B host in ~/.netrc
    or $NETRC)."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in WANDB_ENV):
        return True
    config_dir = Path(env.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb").expanduser()
    workspace = Path(env.get("WANDB_DIR") or ".").expanduser() / "wandb"
    for path in (config_dir / "settings", workspace / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        if parser.has_option("default", "mode"):
            return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    try:
        return netrc.netrc(env.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class TensorBoardTracker:
    """Scalars in <run_dir>/tensorboard/ (torch's SummaryWriter)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        self.log_dir = run_dir / TENSORBOARD_DIR
        self.writer: Any = None

    def open(self, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # events from a killed attempt after the checkpoint are hidden from TensorBoard
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)

    def log(self, points: list[Point]) -> None:
        for step, scalars in points:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbTracker:
    """A W&B run per run directory: offline unless W&B is configured (`wandb_configured`); its id
    and the last step sent are kept in <run_dir>/trackers.json, so that a resume continues the
    same run without logging a step twice."""

    name = "wandb"

    def __init__(self, run_dir: Path, *, name: str, group: str, config: Mapping[str, Any]) -> None:
        self.run_dir, self.run_name, self.group, self.config = run_dir, name, group, dict(config)
        self.state_path = run_dir / STATE_FILE
        self.run: Any = None
        self.logged_step = -1  # steps up to here were logged by an earlier attempt

    def open(self, resume_step: int | None) -> None:
        import wandb

        state = records.read_json(self.state_path) if self.state_path.exists() else {}
        if resume_step == 0 or "wandb_id" not in state:  # the records start over: so does the run
            state = {"wandb_id": uuid.uuid4().hex[:12], "wandb_step": -1}
            records.write_json(self.state_path, state)
        self.state, self.logged_step = state, state["wandb_step"]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "flowarena",
            group=self.group,
            name=self.run_name,
            id=state["wandb_id"],
            resume="allow",
            config=self.config,
            dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
            mode=None if wandb_configured() else "offline",
            reinit="create_new",  # stacked seeds: one run each, in one process
            settings=wandb.Settings(console="off"),  # the run's log has the console already
        )

    def log(self, points: list[Point]) -> None:
        new = [(step, scalars) for step, scalars in points if step > self.logged_step]
        for step, scalars in new:
            self.run.log(scalars, step=step)
        if new and new[-1][0] > self.state["wandb_step"]:
            self.state["wandb_step"] = new[-1][0]
            records.write_json(self.state_path, self.state)

    def close(self, failed: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)


def make_tracker(name: str, run_dir: Path, *, run_name: str, group: str, config: Mapping[str, Any]) -> Any:
    if name == "tensorboard":
        return TensorBoardTracker(run_dir)
    if name == "wandb":
        return WandbTracker(run_dir, name=run_name, group=group, config=config)
    raise UserError(f"unknown logger {name!r}; use tensorboard, wandb or none")


class Trackers:
    """The trackers of one run directory. `rewind(step)` says the records continue after `step`
    (a resume); `log_rows` sends rows just written to the records. Trackers open at the first
    rows; one that raises is reported once and dropped, so the run goes on."""

    def __init__(
        self,
        names: Sequence[str],
        run_dir: str | Path,
        *,
        run_name: str = "",
        group: str = "",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        config = config or {}
        self.trackers = [
            make_tracker(n, self.run_dir, run_name=run_name, group=group, config=config) for n in names
        ]
        self.opened: set[str] = set()
        self.resume_step: int | None = None

    def rewind(self, step: int) -> None:
        self.resume_step = step

    def log_rows(self, kind: str, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        for tracker in list(self.trackers):
            self._call(tracker, lambda tracker=tracker: self._log(tracker, kind, rows), faults_stop=True)

    def _log(self, tracker: Any, kind: str, rows: list[Mapping[str, Any]]) -> None:
        if tracker.name not in self.opened:
            self.opened.add(tracker.name)
            tracker.open(self.resume_step)
        tracker.log(tracker_points(kind, rows))

    def close(self, failed: bool = False) -> None:
        for tracker in list(self.trackers):
            self._call(tracker, lambda tracker=tracker: tracker.close(failed))
        self.trackers = []

    def _call(self, tracker: Any, action: Any, faults_stop: bool = False) -> None:
        try:
            action()
        except Exception as error:
            if faults_stop and isinstance(error, StorageError):
                raise
            if faults_stop and is_storage_fault(error):
                raise StorageError(getattr(error, "filename", None) or self.run_dir, error) from None
            self.trackers.remove(tracker)
            say(
                f"warning: the {tracker.name} logger failed for {self.run_dir} "
                f"({type(error).__name__}: {error}); it logs nothing more for this run, whose "
                f"parquet records are complete"
            )


def attach_trackers(resolved: ResolvedRun, run_dir: records.RunDir) -> None:
    """Give a run directory the trackers its spec names (none: nothing to do); W&B gets the run's
    spec.json as its config, the sweep as its group."""
    spec = resolved.spec
    if spec.loggers:
        run_dir.trackers = Trackers(
            spec.loggers,
            run_dir.path,
            run_name=f"{resolved.variant}/{resolved.task.task}/seed{spec.seed}",
            group=spec.sweep,
            config=run_dir.read_spec(),
        )


def detach_trackers(run_dirs: Iterable[records.RunDir], *, failed: bool) -> None:
    for run_dir in run_dirs:
        if run_dir.trackers is not None:
            run_dir.trackers.close(failed)
            run_dir.trackers = None
