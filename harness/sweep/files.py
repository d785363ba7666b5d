"""The files a sweep keeps beside its runs' records: OUT/NAME/sweep.json (the plan), each run's
run.log (stdout and stderr of every attempt) and .heartbeat, and submitit's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.run import records

SWEEP_FILE = "sweep.json"
LOG_NAME = "run.log"  # every run's stdout and stderr, one block per attempt (harness/sweep/job.py)
HEARTBEAT_NAME = ".heartbeat"  # touched every 30 s by a run started through a sweep
JOBS_DIR = ".submitit"  # submitit's pickles and job-level logs, under the sweep directory


def read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / SWEEP_FILE
    return records.read_json(path) if path.is_file() else {}
