"""A sweep against the published results, method by method: our value with its CI beside the paper's.

A sweep variant is paired with the published rows of the same variant only: a method at its
defaults (the variant name equals the method's registry name, e.g. `qam`, not `qam[inv_temp=3]`),
or a variant of the sensitivity study (`qam-edit[num_critics=2]`): the paper's numbers belong to the
paper's configuration. Everything else is shown alone. A pair is marked when the published value
lies outside our confidence interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.records import PUBLISHED, PUBLISHED_SUFFIX
from analysis.scores import ALL_TASKS
from analysis.tables import markdown_table

OUTSIDE_MARK = "≠"
VERSUS_COLUMNS = [
    "row", "method", "variant", "value", "ci_low", "ci_high", "n_tasks", "n_seeds",
    "published", "published_n_tasks", "published_n_seeds", "outside_ci",
]  # fmt: skip


def has_pairs(board: pd.DataFrame) -> bool:
    """Whether a leaderboard holds both a sweep's columns and published ones."""
    return bool((board["source"] == PUBLISHED).any() and (board["source"] != PUBLISHED).any())


def versus_published(board: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """One row per (row, sweep variant) of a leaderboard with published columns (`VERSUS_COLUMNS`).

    `published` is the published value of the same variant (NaN when the paper has none: a
    variant other than its method at its defaults or a released sensitivity variant); `outside_ci`
    is True when that value lies outside [ci_low, ci_high], None when there is nothing to compare
    (no CI or no pair)."""
    methods = records.drop_duplicates("variant").set_index("variant")["method"].to_dict()
    cells = board.set_index(["row", "variant"])
    rows = []
    for cell in board[board["source"] != PUBLISHED].itertuples():
        method = methods.get(cell.variant, cell.variant)
        paired = (cell.row, cell.variant + PUBLISHED_SUFFIX) in cells.index
        theirs = cells.loc[(cell.row, cell.variant + PUBLISHED_SUFFIX)] if paired else None
        rows.append(_pair_row(cell, method, theirs))
    return pd.DataFrame(rows, columns=VERSUS_COLUMNS)


def _pair_row(cell, method: str, theirs: pd.Series | None) -> dict:
    published = np.nan if theirs is None else float(theirs["value"])
    comparable = not (np.isnan(published) or np.isnan(cell.ci_low) or np.isnan(cell.ci_high))
    return {
        "row": cell.row,
        "method": method,
        "variant": cell.variant,
        "value": cell.value,
        "ci_low": cell.ci_low,
        "ci_high": cell.ci_high,
        "n_tasks": cell.n_tasks,
        "n_seeds": cell.n_seeds,
        "published": published,
        "published_n_tasks": np.nan if theirs is None else theirs["n_tasks"],
        "published_n_seeds": np.nan if theirs is None else theirs["n_seeds"],
        "outside_ci": (not cell.ci_low <= published <= cell.ci_high) if comparable else None,
    }


def render_versus(table: pd.DataFrame, ci: float = 0.95) -> str:
    """The pairs as a markdown table, domains first and "all tasks" last, with a legend."""
    order = [r for r in dict.fromkeys(table["row"]) if r != ALL_TASKS] + [ALL_TASKS]
    shown = pd.DataFrame(
        {
            "domain": table["row"],
            "variant": table["variant"],
            "ours": [_ours(r) for r in table.itertuples()],
            "published": [_theirs(r) for r in table.itertuples()],
            "tasks x seeds (ours / published)": [_sizes(r) for r in table.itertuples()],
        }
    )
    shown["order"] = shown["domain"].map({r: i for i, r in enumerate(order)})
    shown = shown.sort_values("order", kind="stable").drop(columns="order")
    legend = [
        "",
        f"- {OUTSIDE_MARK}: the published value lies outside our {ci * 100:g}% CI",
        "- a variant is paired only when the paper has it: its method at the method's defaults, or a "
        "variant of the sensitivity study; others are shown alone (published: -)",
    ]
    return "**Against the published results**\n\n" + markdown_table(shown) + "\n" + "\n".join(legend) + "\n"


def _ours(row) -> str:
    if np.isnan(row.value):
        return "n/a"
    interval = "" if np.isnan(row.ci_low) else f" [{row.ci_low:.1f}, {row.ci_high:.1f}]"
    return f"{row.value:.1f}{interval}"


def _theirs(row) -> str:
    if np.isnan(row.published):
        return "-"
    return f"{row.published:.1f}" + (f" {OUTSIDE_MARK}" if row.outside_ci else "")


def _sizes(row) -> str:
    ours = f"{row.n_tasks} x {row.n_seeds}"
    if np.isnan(row.published):
        return ours
    return f"{ours} / {int(row.published_n_tasks)} x {int(row.published_n_seeds)}"
