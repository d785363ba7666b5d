"""Evaluate a finished run's checkpoint again for more eval-parameter settings, without training
(`flowarena evaluate RUN_DIR --eval-param guidance_weight=0.004,0.01`).

The agent is rebuilt from spec.json (method, resolved config, task settings) and ckpt.pt, and
each setting is evaluated at the checkpoint's step with `evaluate_grid`, so episode seeds and
acting noise are those a training run would have used for that setting at that step. Settings
already recorded at that step are skipped, never recomputed: existing rows stay as they are and
no (step, eval_params) pair appears twice. Rows are appended one setting at a time, each write
atomic, so an interrupted re-evaluation keeps what it finished and a rerun fills the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import suites
from algorithms import registry
from algorithms.base import Agent
from harness.errors import UserError
from harness.progress import progress_bar
from harness.run import records
from harness.run.checkpoint import CHECKPOINT_FORMAT
from harness.run.envs import make_env, make_eval_envs
from harness.run.evaluate import default_eval_envs
from harness.run.grid import eval_rows, evaluate_grid
from harness.run.precision import apply as apply_precision
from harness.run.precision import recorded_precision
from harness.run.spec import check_eval_params, eval_setting
from harness.run.trainer import env_spec_of, pick_device


@dataclass
class Reevaluation:
    """What `reevaluate` did: the checkpoint step, the settings it added and those it skipped."""

    path: Path
    step: int
    added: dict[str, float] = field(default_factory=dict)  # label -> success
    skipped: list[str] = field(default_factory=list)  # labels already recorded at `step`

    def summary(self) -> str:
        lines = []
        if self.added:
            added = ", ".join(f"{label} (success {success:.3g})" for label, success in self.added.items())
            lines.append(f"{self.path}: step {self.step}: added {added}")
        if self.skipped:
            lines.append(
                f"{self.path}: step {self.step}: skipped {', '.join(self.skipped)} "
                f"(already recorded at this step; existing rows are never recomputed)"
            )
        return "\n".join(lines)


@dataclass
class LoadedRun:
    """A run directory's agent restored from its checkpoint, with what its rows need."""

    run_dir: records.RunDir
    spec: dict[str, Any]
    agent: Agent
    env: Any  # the task's environment, one as in training (episodes reset with their own seeds)
    step: int
    elapsed_s: float
    phase: str
    recorded: list[str]  # eval_params labels with rows at `step`
    slots: dict[int, Any] = field(default_factory=dict)  # evaluation environments by their number

    def row_keys(self) -> dict[str, Any]:
        keys = {name: self.spec[name] for name in ("sweep", "method", "variant", "task", "domain", "seed")}
        return {**keys, "precision": recorded_precision(self.spec), "phase": self.phase}

    def evaluate(self, grid: list[dict[str, float]], episodes: int) -> list[dict[str, Any]]:
        """evals rows of the checkpoint for every setting of `grid`, on as many environments as
        the run evaluated on (runs from before Budget.eval_envs used one)."""
        seed = self.spec["seed"]
        n = default_eval_envs(episodes, self.spec["budget"].get("eval_envs", 1))
        if n not in self.slots:
            self.slots[n] = make_eval_envs(self.spec["task"], n, first=self.env)
        envs = self.slots[n]
        results = evaluate_grid(self.agent, envs, seed=seed, step=self.step, episodes=episodes, grid=grid)
        return eval_rows(results, self.row_keys(), step=self.step, wall_time_s=self.elapsed_s)


def reevaluate(
    path: str | Path,
    grid: list[dict[str, float]],
    *,
    eval_episodes: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Reevaluation:
    """Evaluate the run's checkpoint for each setting of `grid` not yet recorded at its step
    and append one evals row per setting. Raises UserError on bad input."""
    run = load_run(path, grid, device=device)
    episodes = _episodes(run.spec, eval_episodes)
    report = Reevaluation(run.run_dir.path, run.step)
    todo = {}
    for given in grid:
        params, label = eval_setting(run.agent.eval_params, given)
        if label in run.recorded:
            report.skipped.append(label)
        else:
            todo[label] = params
    bar = progress_bar(
        total=len(todo) * episodes,
        desc=f"{run.spec['variant']} {run.spec['task']} seed{run.spec['seed']} step {run.step}",
        unit="episode",
        enabled=progress,
    )
    with bar:
        for label, params in todo.items():
            bar.set_postfix_str(label)
            rows = run.evaluate([params], episodes)
            run.run_dir.append_rows("evals", rows)
            report.added[label] = rows[0]["success"]
            bar.update(episodes)
    return report


def evaluate_checkpoint(
    path: str | Path,
    grid: list[dict[str, float]],
    *,
    eval_episodes: int | None = None,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """The evals rows the run's checkpoint gives for every setting of `grid`, recorded or not;
    writes nothing."""
    run = load_run(path, grid, device=device)
    return run.evaluate(grid, _episodes(run.spec, eval_episodes))


def load_run(path: str | Path, grid: list[dict[str, float]], *, device: str = "auto") -> LoadedRun:
    """Rebuild a run's agent from spec.json and ckpt.pt after checking `grid` against the
    method's declared eval parameters. Raises UserError on bad input."""
    run_dir = records.RunDir(path)
    if not run_dir.exists():
        raise UserError(
            f"{run_dir.path} is not a run directory (no spec.json); pass a directory like "
            f"results/<sweep>/<variant>/<task>/seed<k>"
        )
    spec = run_dir.read_spec()
    required = ("method", "variant", "task", "domain", "seed", "sweep", "config", "task_settings", "budget")
    missing = [key for key in required if key not in spec]
    if missing:
        raise UserError(
            f"{run_dir.spec_path} lacks {', '.join(missing)}; it was not written by flowarena run"
        )
    method = registry.get(spec["method"])
    if not grid:
        raise UserError("give at least one --eval-param KEY=V1,V2,... to evaluate")
    check_eval_params(method, grid)
    state = run_dir.read_status().get("state")
    if state in ("pending", "running"):
        raise UserError(
            f"{run_dir.path} is {state}: re-evaluate a run once it has stopped (a run that was killed "
            f"shows 'running'; finish it first with the same `flowarena run` command)"
        )
    if not run_dir.ckpt_path.exists():
        raise UserError(f"{run_dir.path} has no checkpoint (ckpt.pt) to evaluate")

    torch_device = pick_device(device)
    config = registry.make_config(method, spec["config"])
    task = suites.TaskSettings(**spec["task_settings"])
    env = make_env(task.task)
    env_spec = env_spec_of(env, task)
    agent = registry.create(method, env_spec, config, device=torch_device, seed=spec["seed"])
    apply_precision(agent, recorded_precision(spec))
    checkpoint = _load_checkpoint(run_dir.ckpt_path)
    try:
        agent.load_state_dict(checkpoint["agent"])
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise UserError(
            f"checkpoint {run_dir.ckpt_path} does not fit the run's spec.json ({_describe(error)})"
        ) from None
    step = int(checkpoint["step"])
    evals = run_dir.read_rows("evals")
    recorded = [] if evals.empty else evals.loc[evals["step"] == step, "eval_params"].fillna("").tolist()
    offline = step <= spec["budget"].get("offline_steps", step)
    phase = checkpoint.get("phase") or ("offline" if offline else "online")  # as Trainer.phase
    elapsed_s = float(checkpoint.get("elapsed_s", 0.0))
    return LoadedRun(run_dir, spec, agent, env, step, elapsed_s, phase, recorded)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # on the CPU: generator states must be CPU tensors; load_state_dict moves the rest
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(
            f"checkpoint {path} is unreadable ({_describe(error)}); it is damaged or not a flowarena "
            f"checkpoint, and only a new run can replace it"
        ) from None
    if not isinstance(checkpoint, dict) or not {"agent", "step"} <= set(checkpoint):
        raise UserError(f"checkpoint {path} is not a flowarena checkpoint (no agent state or step)")
    if checkpoint.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise UserError(
            f"checkpoint {path} has format {checkpoint.get('format')!r}; this flowarena reads format "
            f"{CHECKPOINT_FORMAT}"
        )
    return checkpoint


def _episodes(spec: dict[str, Any], eval_episodes: int | None) -> int:
    episodes = spec["budget"].get("eval_episodes") if eval_episodes is None else eval_episodes
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 1:
        raise UserError(f"--eval-episodes must be an integer >= 1, got {episodes!r}")
    return episodes


def _describe(error: Exception) -> str:
    """The error's type and the first line of its message (torch's run over many lines)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
