"""Checkpoints of a run: ckpt.pt (format CHECKPOINT_FORMAT: step, elapsed time, phase, agent,
replay buffer, online acting state, dataset shard), written on the trainer's schedule and read back
on resume, when the rows written after it are dropped.

A new checkpoint is written to ckpt.next.pt (NEXT_CHECKPOINT), flushed to the disk and read back
against the SHA-256 of what was serialised (`save_checkpoint`); only then does the commit rename
ckpt.pt to ckpt.prev.pt (PREVIOUS_CHECKPOINT) and ckpt.next.pt to ckpt.pt (`commit_checkpoint`).
A resume reads ckpt.pt, and falls back to ckpt.prev.pt with a warning line when ckpt.pt is
damaged (`load_checkpoint`); with neither readable it raises CorruptCheckpoint. A stacked group
writes every seed's ckpt.next.pt first and then commits them all; a resume completes or undoes a
commit cut short in between (`resolve_pending_checkpoints`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from algorithms.base import slice_agent_state, stack_agent_states
from harness.errors import StorageError, UserError, is_storage_fault
from harness.progress import say
from harness.run import records
from harness.run.members import Member

CHECKPOINT_FORMAT = 1
CHECKPOINT = "ckpt.pt"
NEXT_CHECKPOINT = "ckpt.next.pt"  # a new checkpoint, verified but not yet committed
PREVIOUS_CHECKPOINT = "ckpt.prev.pt"  # the checkpoint before ckpt.pt, kept for a damaged ckpt.pt


class CorruptCheckpoint(UserError):
    """No checkpoint of a run is readable: a person must decide (`flowarena status` says corrupt)."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


class Checkpoints:
    """The checkpoint half of `Trainer` (harness/run/trainer.py): save at the schedule, restore on
    resume. Uses the trainer's members, seeds, agent, buffer, buffer_index, data, budget, step,
    elapsed_s, phase, stacked, progress and online_status."""

    def checkpoint(self) -> None:
        for member in self.members:
            member.flush_train_rows()
        if self.stacked:
            self.checkpoint_group()
        else:
            member = self.members[0]
            state = self.checkpoint_state(self.agent.state_dict(), self.buffer.state_dict(), member)
            save_checkpoint(member.run_dir.path / NEXT_CHECKPOINT, state)
            commit_checkpoint(member.run_dir.path)
        self.checkpoint_step = self.step
        for member in self.members:
            member.run_dir.write_status(
                "running", step=self.step, checkpoint_step=self.step, **self.online_status(member)
            )

    def checkpoint_state(
        self, agent: dict[str, Any], buffer: dict[str, Any], member: Member
    ) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "phase": self.phase,
            "agent": agent,
            "buffer": buffer,
            "online": member.explorer.state_dict() if member.explorer is not None else None,
            "shard": self.data.current,  # the dataset shard the buffer holds (harness/run/shards.py)
        }

    def checkpoint_group(self) -> None:
        """Every seed's slice to its ckpt.next.pt, then all of them committed."""
        full = self.agent.state_dict()
        for position, member in enumerate(self.members):
            buffer = self.buffer.member(self.buffer_index[position]).state_dict()
            state = self.checkpoint_state(slice_agent_state(full, position), buffer, member)
            state["seed_group"] = self.seeds
            save_checkpoint(member.run_dir.path / NEXT_CHECKPOINT, state)
        for member in self.members:
            commit_checkpoint(member.run_dir.path)

    def restore(self) -> None:
        """Continue from the checkpoints, if any, dropping rows written after them."""
        for member in self.members:
            resolve_pending_checkpoints(member.run_dir.path)
        states = align_steps([member.run_dir.path for member in self.members])
        steps = {member.seed: state["step"] if state else 0 for member, state in zip(self.members, states)}
        if len(set(steps.values())) > 1:
            raise UserError(
                f"the seeds of this stacked group have checkpoints at different steps ({steps}); resume "
                f"them as they were started (the same seeds together, or each alone with --seed)"
            )
        if all(states):
            agent = stack_agent_states([s["agent"] for s in states]) if self.stacked else states[0]["agent"]
            self.agent.load_state_dict(agent)
            for position, (member, state) in enumerate(zip(self.members, states)):
                buffer = self.buffer.member(position) if self.stacked else self.buffer
                buffer.load_state_dict(state["buffer"])
                member.online_state = state.get("online")
            self.step = self.synced_step = states[0]["step"]
            self.check_shard(states[0].get("shard"))
            self.elapsed_s = states[0]["elapsed_s"]
            for member in self.members:
                say(f"resuming {member.run_dir.path} from step {self.step}", self.progress)
        for member in self.members:
            for kind in ("evals", "train"):
                member.run_dir.truncate_rows(self.step, kind)

    def check_shard(self, saved: int | None) -> None:
        """A resume trains on the shard the checkpoint's step had (recomputed from the step; a
        checkpoint without the field predates it)."""
        expected = self.data.shard_for_step(self.step, self.budget.offline_steps)
        if saved is not None and saved != expected:
            raise UserError(
                f"the checkpoint at step {self.step} trained on dataset shard {saved}, but this run "
                f"would resume on shard {expected}: the shard files or the rotation interval changed "
                f"since it started; restore them, or move the run directory away to start over"
            )


def align_steps(run_dirs: list[Path]) -> list[dict[str, Any] | None]:
    """The checkpoints of a stacked group's seeds (one for a lone run). When a seed fell back to
    its previous checkpoint (`load_checkpoint`), the seeds ahead of it use their previous one too
    if it is at that step, so that the group resumes together from there."""
    states = [load_checkpoint(run_dir / CHECKPOINT) for run_dir in run_dirs]
    if not all(states) or len({state["step"] for state in states}) < 2:  # type: ignore[index]
        return states
    low = min(state["step"] for state in states)  # type: ignore[index]
    for index, run_dir in enumerate(run_dirs):
        if states[index]["step"] != low and (run_dir / PREVIOUS_CHECKPOINT).exists():  # type: ignore[index]
            with contextlib.suppress(Exception):
                older = torch.load(run_dir / PREVIOUS_CHECKPOINT, map_location="cpu", weights_only=True)
                states[index] = older if older["step"] == low else states[index]
    return states


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` (atomically), flushed to the disk and read back: raises StorageError,
    leaving `path` as it was, when the filesystem refuses the write or returns other bytes."""
    serialised = io.BytesIO()
    torch.save(state, serialised)
    data = serialised.getbuffer()
    digest = hashlib.sha256(data).hexdigest()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if hashlib.sha256(tmp.read_bytes()).hexdigest() != digest:
            raise StorageError(path, OSError(errno.EIO, "the bytes read back differ from those written"))

    records.atomic_write(path, write)


def commit_checkpoint(run_dir: Path) -> None:
    """Make ckpt.next.pt the run's checkpoint, and the one it replaces the previous checkpoint
    (replacing the one before). A crash between the two renames leaves ckpt.prev.pt alone, which
    a resume reads."""
    current, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT
    try:
        if current.exists():
            os.replace(current, previous)
        os.replace(run_dir / NEXT_CHECKPOINT, current)
    except OSError as error:
        if is_storage_fault(error):
            raise StorageError(current, error) from None
        raise


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A run's checkpoint `path` (ckpt.pt), or, when it is damaged or absent, the previous one
    beside it, with a warning line (always shown); None when there is neither. On the CPU: generator states must
    be CPU tensors; load_state_dict moves the rest. Raises CorruptCheckpoint when none is readable."""
    candidates = [p for p in (path, path.with_name(PREVIOUS_CHECKPOINT)) if p.exists()]
    failures = []
    for candidate in candidates:
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as error:
            failures.append(f"{candidate} is unreadable ({_describe(error)})")
            continue
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            failures.append(f"{candidate} is not a flowarena checkpoint (no step)")
            continue
        if failures:
            say(
                f"warning: {failures[0]}; resuming from the previous checkpoint {candidate} "
                f"(step {state['step']})"
            )
        return state
    if not failures:
        return None
    raise CorruptCheckpoint(
        path,
        f"no readable checkpoint for {path.parent}: {'; '.join(failures)}. Move the run directory "
        f"away to restart it from scratch, or restore a checkpoint from a backup",
    )


def _describe(error: BaseException) -> str:
    """The error's type and the first sentence of its message (torch's run to pages)."""
    first = (str(error).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {first}"


def _checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint file, None when it is absent or unreadable (memory-mapped: the
    tensors are not read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return None


def resolve_pending_checkpoints(run_dir: Path) -> None:
    """Finish or undo the commit of a run (a group of one) or stacked group that stopped between
    writing its seeds' ckpt.next.pt and renaming them over ckpt.pt: if every seed of the group (named in the file)
    has its new checkpoint, as ckpt.next.pt or already renamed, the renames are completed;
    otherwise every ckpt.next.pt of the group is removed and each seed keeps its previous
    checkpoint. Seeds' run directories are siblings (seed<k>)."""
    pending = run_dir / NEXT_CHECKPOINT
    if not pending.exists():
        return
    try:
        saved = torch.load(pending, map_location="cpu", weights_only=True, mmap=True)
        own = [int(run_dir.name.removeprefix("seed"))]  # a lone run's: a group of one
        step, group = int(saved["step"]), [int(seed) for seed in saved.get("seed_group") or own]
    except Exception:
        pending.unlink()  # an incomplete write: this seed's new checkpoint does not exist
        return
    dirs = [run_dir.parent / f"seed{seed}" for seed in group]
    complete = all(
        _checkpoint_step(d / NEXT_CHECKPOINT) == step or _checkpoint_step(d / "ckpt.pt") == step for d in dirs
    )
    for d in dirs:
        if (d / NEXT_CHECKPOINT).exists():
            if complete:
                commit_checkpoint(d)
            else:
                (d / NEXT_CHECKPOINT).unlink()
