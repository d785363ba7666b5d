"""`flowarena collect`: every run's evals.parquet of a sweep merged into SWEEP/evals.parquet,
sorted and written atomically (the same records give the same file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

    def summary(self) -> str:
        lines = [f"wrote {self.path}: {self.rows} evals row(s) from {self.runs} run(s)"]
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
    frames, without = [], []
    for s in statuses:
        frame = records.RunDir(s.run_dir).read_rows("evals")
        if frame.empty:
            without.append(s)
        else:
            frames.append(frame)
    if not frames:
        raise UserError(f"{sweep_dir}: no run has evals yet; nothing to collect (see `flowarena status`)")
    evals = pd.concat(frames, ignore_index=True).reindex(columns=records.EVAL_COLUMNS)
    evals = evals.astype(records.EVAL_DTYPES)
    key = ["variant", "task", "seed", "phase", "step", "eval_params"]
    evals = evals.sort_values(key, kind="mergesort").reset_index(drop=True)
    path = Path(sweep_dir) / "evals.parquet"
    records.write_parquet(path, evals)
    unfinished = [s for s in statuses if s.condition not in records.FINAL_STATES and s not in without]
    return Collected(path, len(evals), len(frames), without, unfinished)
