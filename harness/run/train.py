"""One run: (method, task, seed, config) -> records.

The offline phase trains on the dataset, evaluates on a schedule and at its end, logs
training metrics, checkpoints on a schedule and at the end. The online phase (`online_steps` > 0)
follows: the agent acts in its own environment (harness/run/online.py), each step's transition
joins the replay buffer (dataset + online transitions), and from online step
`online_warmup_steps` on every environment step makes `utd_ratio` updates. Step numbers
continue: online step j is recorded at step offline_steps + j, with phase `online` in evals and
train rows, on the same evaluation, logging and checkpoint schedule. With a sharded (100M)
dataset the next shard replaces the buffer's dataset part every 1000 steps in both phases, the
online transitions staying (harness/run/shards.py), as the QAM reference rotates.

Running the same command again resumes from the last checkpoint, in either phase: rows written
after that checkpoint are dropped and recomputed, so the records equal those of an
uninterrupted run.

Evaluations play `eval_episodes` episodes on `eval_envs` environments in lockstep, one batched
policy call per chunk (harness/run/evaluate.py), stepped here or in `RunSpec.eval_workers` worker
processes (harness/run/envs.py).

Stacked seeds (`run_group`, `flowarena run --seeds`, `flowarena sweep --seeds-per-process`):
seeds of one run train in one process as one stacked agent (algorithms/base.py), one batched
update for all. Each seed keeps a lone run's directory, records and checkpoint format and draws
the random numbers it would draw alone (initialisation, training noise, batches, evaluation and
exploration noise), so it trains as it would alone up to float rounding; see `Trainer`
(harness/run/trainer.py) for divergence and checkpoints.
"""

from __future__ import annotations

import traceback

from harness.errors import StorageError, UserError
from harness.progress import say
from harness.run import records
from harness.run.checkpoint import CorruptCheckpoint
from harness.run.compile import compile_record
from harness.run.spec import IDENTITY_KEYS, ResolvedRun, RunSpec, check_same_run, resolve
from harness.run.stop import clear_stop as clear_stop  # re-exported: callers of run() stop it
from harness.run.stop import request_stop as request_stop
from harness.run.trackers import attach_trackers, detach_trackers
from harness.run.trainer import Trainer


def run(spec: RunSpec, *, progress: bool = True) -> str:
    """Train, evaluate and record one run; resumes when its directory holds a checkpoint.
    Returns the final state (done or diverged), or "preempted" after `request_stop()`.
    Raises UserError on bad input."""
    resolved, run_dir, state = _open_run(spec, progress)
    if state is not None:
        return state
    trainer = Trainer([(resolved, run_dir)], progress=progress)  # loads data: bad input fails here
    return _train(trainer)[spec.seed]


def _open_run(spec: RunSpec, progress: bool) -> tuple[ResolvedRun, records.RunDir, str | None]:
    """The run's resolved spec and directory, and its final state when it has already ended."""
    resolved = resolve(spec)
    run_dir = records.RunDir(resolved.path)
    if run_dir.exists():
        check_same_run(run_dir, resolved)
        state = run_dir.read_status().get("state")
        if state in records.FINAL_STATES:
            say(f"{resolved.path}: already {state}, nothing to do", progress)
            return resolved, run_dir, state
    return resolved, run_dir, None


def run_group(specs: list[RunSpec], *, progress: bool = True) -> dict[int, str]:
    """Train runs that differ only in their seed together: stacked parameters, one batched update
    for all seeds (algorithms/base.py). Each seed has its own run directory and records, in the
    format of a lone run; seeds already done or diverged are skipped. Returns each seed's state
    (done, diverged, or preempted after `request_stop()`). Raises UserError on bad input."""
    if not specs:
        return {}
    seeds = [spec.seed for spec in specs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds repeats a seed: {seeds}")
    runs, states = [], {}
    for spec in specs:
        resolved, run_dir, state = _open_run(spec, progress)
        if state is not None:
            states[spec.seed] = state
        else:
            runs.append((resolved, run_dir))
    _check_one_group(runs)
    if runs:
        states.update(_train(Trainer(runs, progress=progress, stacked=True)))
    return {seed: states[seed] for seed in seeds}


def _check_one_group(runs: list[tuple[ResolvedRun, records.RunDir]]) -> None:
    """Stacked runs must differ in their seed only."""
    if not runs:
        return
    keys = [k for k in IDENTITY_KEYS if k != "seed"] + ["dataset_dir"]
    first = runs[0][0].record_spec()
    for resolved, _ in runs[1:]:
        other = resolved.record_spec()
        differing = [k for k in keys if other[k] != first[k]]
        if differing or resolved.spec.device != runs[0][0].spec.device:
            raise UserError(
                f"stacked seeds must share everything but the seed; these differ in {differing or 'device'}"
            )


def record_compile_choice(run_dir: records.RunDir, resolved: ResolvedRun) -> None:
    """A resumed run's spec.json says how this process updates (`--compile` may differ from the
    first command's; it is not part of the run's identity)."""
    saved = run_dir.read_spec()
    current = compile_record(resolved.spec.compile, resolved.compiled)
    if saved.get("compile") != current:
        run_dir.write_spec({**saved, "compile": current})


def _train(trainer: Trainer) -> dict[int, str]:
    """Run a trainer, marking its unfinished runs failed when it raises (`failed_status`); the
    runs' experiment trackers (harness/run/trackers.py) are open meanwhile."""
    run_dirs = [member.run_dir for member in trainer.members]
    failed = False
    try:
        for member in trainer.members:
            if not member.run_dir.exists():
                member.run_dir.write_spec(member.resolved.record_spec())
            else:
                record_compile_choice(member.run_dir, member.resolved)
            attach_trackers(member.resolved, member.run_dir)
        return trainer.run()
    except BaseException as error:
        failed = True
        fields = failed_status(error)
        for member in trainer.members:
            if member.final is None:
                write_failed_status(member.run_dir, step=trainer.step, **fields)
        raise
    finally:
        trainer.close()
        detach_trackers(run_dirs, failed=failed)


def failed_status(error: BaseException) -> dict[str, str]:
    """status.json's fields for a run that stopped on `error`: the error; the traceback unless the
    message says it all (bad input, a refused write); `corrupt`, the checkpoint path, when no
    checkpoint is readable (`flowarena status` then says corrupt)."""
    fields = {"error": f"{type(error).__name__}: {error}"}
    if not isinstance(error, (UserError, StorageError)):
        fields["traceback"] = traceback.format_exc()
    if isinstance(error, CorruptCheckpoint):
        fields["corrupt"] = str(error.path)
    return fields


def write_failed_status(run_dir: records.RunDir, **fields: object) -> None:
    """Mark a run failed, if its status.json can still be written (a full disk may refuse it too:
    then the error reaches the user alone, and status.json keeps its last state)."""
    try:
        run_dir.write_status("failed", **fields)
    except (StorageError, OSError) as error:
        say(f"warning: could not mark {run_dir.path} failed ({error})")
