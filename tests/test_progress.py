"""analysis/progress.py: tqdm on a terminal; elsewhere plain lines (no carriage returns) at most one
per interval, with the count, the rate, the ETA and the postfix (the train loop's last success). A
fake clock drives time. Every progress bar of the code is made there: no other module imports tqdm."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest
from conftest import TASK, run_args
from tqdm import tqdm

import analysis.progress
from analysis.progress import PlainProgress, progress_bar
from harness.cli import main

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def plain(stream: io.StringIO, clock: FakeClock, **kwargs) -> PlainProgress:
    bar = progress_bar(file=stream, clock=clock, interval=30.0, **kwargs)
    assert isinstance(bar, PlainProgress)
    return bar


def test_a_log_gets_plain_lines_with_count_rate_success_and_eta() -> None:
    stream, clock = io.StringIO(), FakeClock()
    bar = plain(stream, clock, total=1000, desc="qam task seed0", unit="step")
    bar.set_postfix(loss="0.5", success="0.25", refresh=False)
    for _ in range(29):
        clock.now += 1.0
        bar.update(1)
    assert stream.getvalue() == ""  # 29 s: no line yet
    clock.now += 1.0
    bar.update(1)  # 30 steps in 30 s: 1 step/s, 970 steps left
    bar.set_postfix({"loss": "0.4", "success": "0.25"}, False)  # as tqdm: the postfix is replaced
    for _ in range(30):
        clock.now += 0.5
        bar.update(2)  # 60 more steps in 15 s: 90 steps in 45 s
    for _ in range(15):
        clock.now += 1.0
        bar.update(0)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == [
        "qam task seed0: 30/1000 steps (3%), 1 steps/s, elapsed 0:00:30, ETA 0:16:10, loss=0.5 success=0.25",
        "qam task seed0: 90/1000 steps (9%), 1.5 steps/s, elapsed 0:01:00, ETA 0:10:07, loss=0.4 success=0.25",
    ]


@pytest.mark.parametrize("step_s", [0.07, 1.0, 13.0, 31.0])
def test_at_most_one_line_per_interval_and_one_as_soon_as_due(step_s: float) -> None:
    stream, clock = io.StringIO(), FakeClock()
    bar = plain(stream, clock, total=10_000, unit="step")
    times = [clock.now]  # the bar's start
    for _ in range(1000):
        clock.now += step_s
        before = stream.getvalue().count("\n")
        bar.update(1)
        if stream.getvalue().count("\n") > before:
            times.append(clock.now)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) >= 2 and all(30.0 - 1e-9 <= gap < 30.0 + step_s for gap in gaps), gaps


def test_closing_adds_the_final_line_only_after_lines_and_only_when_left() -> None:
    stream, clock = io.StringIO(), FakeClock()
    with plain(stream, clock, total=10, unit="run") as bar:
        bar.update(3)  # no line: the interval has not passed
    assert stream.getvalue() == ""
    with plain(stream, clock, total=10, unit="run", initial=2) as bar:
        clock.now += 40
        bar.update(4)
        clock.now += 10
        bar.update(4)  # 10 s after the last line: none, but closing adds the final state
    assert stream.getvalue().splitlines() == [
        "6/10 runs (60%), 0.1 runs/s, elapsed 0:00:40, ETA 0:00:40",
        "10/10 runs (100%), 0.16 runs/s, elapsed 0:00:50, ETA 0:00:00",
    ]
    transient, clock = io.StringIO(), FakeClock()
    for _ in plain(transient, clock, iterable=range(5), desc="bootstrap", leave=False):
        clock.now += 20
    assert transient.getvalue().splitlines() == [  # no final line for a bar that is not left
        "bootstrap: 2/5 it (40%), 0.05 it/s, elapsed 0:00:40, ETA 0:01:00",
        "bootstrap: 4/5 it (80%), 0.05 it/s, elapsed 0:01:20, ETA 0:00:20",
    ]


def test_a_terminal_gets_tqdm_and_disabled_bars_write_nothing() -> None:
    terminal = Terminal()
    bar = progress_bar(total=3, file=terminal, desc="x")
    assert isinstance(bar, tqdm) and not isinstance(bar, PlainProgress)
    bar.update(3)
    bar.close()
    assert "\r" in terminal.getvalue()
    for stream in (Terminal(), io.StringIO()):
        quiet = progress_bar(range(3), file=stream, enabled=False)
        assert list(quiet) == [0, 1, 2] and stream.getvalue() == ""


def test_no_module_but_the_helper_imports_tqdm() -> None:
    offenders = []
    for package in ("analysis", "harness", "suites", "algorithms"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "analysis" / "progress.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "tqdm"]
    assert not offenders, offenders


def test_a_run_logging_to_a_file_writes_plain_lines_with_the_last_success(
    dataset_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(analysis.progress, "PLAIN_INTERVAL_S", 0.0)  # a line at every step
    args = [
        arg for arg in run_args(dataset_dir, tmp_path, steps=10, eval_interval=5) if arg != "--no-progress"
    ]
    assert main(args) == 0
    err = capsys.readouterr().err  # not a terminal
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"fql {TASK} seed0: ")]
    assert [line.split(": ")[1].split(",")[0] for line in lines] == [
        f"{n}/10 steps ({10 * n}%)" for n in range(1, 11)
    ]
    assert all(" steps/s, elapsed " in line and ", ETA " in line for line in lines)
    assert "success=" not in lines[3] and all(
        re.search(r"loss=\S+ success=[01]\.\d\d$", line) for line in lines[4:]
    )
