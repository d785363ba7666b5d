"""Checkpoints of a run: ckpt.pt (format CHECKPOINT_FORMAT: step, elapsed time, phase, agent,
replay buffer, online acting state, dataset shard), written atomically on the trainer's schedule
and read back on resume, when the rows written after it are dropped. A stacked group writes every seed's slice
to ckpt.next.pt (NEXT_CHECKPOINT) first and then renames them all over ckpt.pt; a resume
completes or undoes a commit cut short in between (`resolve_pending_checkpoints`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from algorithms.base import slice_agent_state, stack_agent_states
from harness.errors import UserError
from harness.progress import say
from harness.run import records
from harness.run.members import Member

CHECKPOINT_FORMAT = 1
NEXT_CHECKPOINT = "ckpt.next.pt"  # a stacked group's new checkpoint, before the group commits it


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
            records.atomic_write(member.run_dir.ckpt_path, lambda tmp: torch.save(state, tmp))
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
        """Every seed's slice to its ckpt.next.pt, then all of them over ckpt.pt."""
        full = self.agent.state_dict()
        for position, member in enumerate(self.members):
            buffer = self.buffer.member(self.buffer_index[position]).state_dict()
            state = self.checkpoint_state(slice_agent_state(full, position), buffer, member)
            state["seed_group"] = self.seeds
            next_path = member.run_dir.path / NEXT_CHECKPOINT
            records.atomic_write(next_path, lambda tmp, state=state: torch.save(state, tmp))
        for member in self.members:
            os.replace(member.run_dir.path / NEXT_CHECKPOINT, member.run_dir.ckpt_path)

    def restore(self) -> None:
        """Continue from the checkpoints, if any, dropping rows written after them."""
        for member in self.members:
            resolve_pending_checkpoints(member.run_dir.path)
        states = [load_checkpoint(member.run_dir.ckpt_path) for member in self.members]
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


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A run's checkpoint (on the CPU: generator states must be CPU tensors; load_state_dict
    moves the rest), or None when there is none. Raises UserError when it is unreadable."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = (str(error).splitlines() or [""])[0]  # torch's unpickling errors run to pages
        raise UserError(
            f"checkpoint {path} is unreadable ({type(error).__name__}: {reason}); move it away to "
            f"restart this run from scratch (its evals.parquet is kept)"
        ) from None


def _checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint file, None when it is absent or unreadable (memory-mapped: the
    tensors are not read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return None


def resolve_pending_checkpoints(run_dir: Path) -> None:
    """Finish or undo the commit of a stacked group that stopped between writing its seeds'
    ckpt.next.pt and renaming them over ckpt.pt: if every seed of the group (named in the file)
    has its new checkpoint, as ckpt.next.pt or already renamed, the renames are completed;
    otherwise every ckpt.next.pt of the group is removed and each seed keeps its previous
    checkpoint. Seeds' run directories are siblings (seed<k>)."""
    pending = run_dir / NEXT_CHECKPOINT
    if not pending.exists():
        return
    try:
        saved = torch.load(pending, map_location="cpu", weights_only=True, mmap=True)
        step, group = int(saved["step"]), [int(seed) for seed in saved["seed_group"]]
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
                os.replace(d / NEXT_CHECKPOINT, d / "ckpt.pt")
            else:
                (d / NEXT_CHECKPOINT).unlink()
