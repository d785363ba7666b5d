"""Leaderboards, paired comparisons, plots and reports from flowarena records.

Reads records only (parquet files and run directories) and never imports torch. Every aggregate
goes through rliable (IQM, mean, median, optimality gap with stratified-bootstrap confidence
intervals). The heavy modules (pandas, rliable, matplotlib) load on first use, so that importing
`analysis.cli` to register the subcommands stays cheap.

    import analysis
    df = analysis.load("results/my-sweep")            # or analysis.load_published(study="main")
    table = analysis.leaderboard(df, metric="mean")   # one row per (row, variant)
    print(analysis.render_leaderboard(table, "md"))
    analysis.compare(df, "qam", "fql")                # paired by (task, seed)
    analysis.versus_published(table, df)              # each method beside its published value
    analysis.write_report(df, "report/", html=True)  # also report.html, self-contained
    plan = analysis.seeds_needed("qam", "fql")        # power per seed count, from the released seeds
"""

from __future__ import annotations

import importlib
from typing import Any

from analysis.errors import AnalysisError

_PUBLIC = {
    "load": "analysis.records",
    "load_published": "analysis.records",
    "sweep_runs": "analysis.records",
    "missing_runs": "analysis.scores",
    "aggregate": "analysis.stats",
    "performance_profiles": "analysis.stats",
    "leaderboard": "analysis.tables",
    "render_leaderboard": "analysis.tables",
    "compare": "analysis.paired",
    "render_comparison": "analysis.paired",
    "write_report": "analysis.report",
    "versus_published": "analysis.versus",
    "render_versus": "analysis.versus",
    "seeds_needed": "analysis.power",
    "render_power": "analysis.power",
}

__all__ = ["AnalysisError", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
