"""`flowarena collect`: every run's evals.parquet of a sweep merged into SWEEP/evals.parquet,
sorted and written atomically (the same records give the same file). A row is counted once per
(run, phase, step, eval_params) whatever the files hold: a duplicate is dropped and reported. An
unreadable evals.parquet stops the collect, every such file named, before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.run import records
from harness.sweep.status import RunStatus, sweep_status


@dataclass
class Collected:
    path: Path
    rows: int
    runs: int
    without_records: list[RunStatus]
    unfinished: list[RunStatus]
    duplicates: list[str]

    def summary(self) -> str:
        lines = [f"wrote {self.path}: {self.rows} evals row(s) from {self.runs} run(s)"]
        if self.duplicates:
            lines.append(
                f"{len(self.duplicates)} duplicated row(s) dropped, each counted once (two processes "
                f"wrote the same run?): "
                + ", ".join(self.duplicates[:10])
                + (" ..." if len(self.duplicates) > 10 else "")
            )
        if self.unfinished:
            lines.append(
                f"{len(self.unfinished)} run(s) not finished yet (their rows so far are included): "
                + ", ".join(s.label for s in self.unfinished[:10])
                + (" ..." if len(self.unfinished) > 10 else "")
            )
        if self.without_records:
            lines.append(
                f"{len(self.without_records)} run(s) without evals: "
                + ", ".join(f"{s.label} ({s.condition})" for s in self.without_records[:10])
                + (" ..." if len(self.without_records) > 10 else "")
            )
        return "\n".join(lines)


def collect(sweep_dir: Path) -> Collected:
    """Merge every run's evals.parquet into SWEEP/evals.parquet (atomic; the same records give the
    same file)."""
    import pandas as pd

    statuses = sweep_status(Path(sweep_dir))
    frames, without, unreadable = [], [], []
    for s in statuses:
        try:
            frame = records.RunDir(s.run_dir).read_rows("evals")
        except UserError as error:
            unreadable.append(str(error))
            continue
        if frame.empty:
            without.append(s)
        else:
            frames.append(frame)
    if unreadable:
        raise UserError(
            f"{len(unreadable)} unreadable evals file(s); nothing collected:\n" + "\n".join(unreadable)
        )
    if not frames:
        raise UserError(f"{sweep_dir}: no run has evals yet; nothing to collect (see `flowarena status`)")
    evals = pd.concat(frames, ignore_index=True).reindex(columns=records.EVAL_COLUMNS)
    evals = evals.astype(records.EVAL_DTYPES)
    evals["eval_params"] = evals["eval_params"].fillna("")
    evals = evals.sort_values(ROW_KEY, kind="mergesort").reset_index(drop=True)
    doubled = evals.duplicated(ROW_KEY)
    duplicates = [_row_label(row) for _, row in evals[doubled].iterrows()]
    evals = evals[~doubled].reset_index(drop=True)
    path = Path(sweep_dir) / "evals.parquet"
    records.check_writable(path.parent)
    records.write_parquet(path, evals)
    unfinished = [s for s in statuses if s.condition not in records.FINAL_STATES and s not in without]
    return Collected(path, len(evals), len(frames), without, unfinished, duplicates)


ROW_KEY = ["sweep", "variant", "task", "seed", "phase", "step", "eval_params"]  # one row per key


def _row_label(row: Any) -> str:
    params = f" {row['eval_params']}" if row["eval_params"] else ""
    return f"{row['variant']} {row['task']} seed{row['seed']} {row['phase']} step {row['step']}{params}"
