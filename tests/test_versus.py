"""The leaderboard against the published results: each method beside its published value, marked
where the published mean falls outside our CI, with the tasks and seeds of each side."""

from __future__ import annotations

import pandas as pd

import analysis
from analysis.cli import main as analysis_main
from analysis.records import PUBLISHED
from analysis.versus import OUTSIDE_MARK, render_versus, versus_published

METHOD = "fql"


def sweep_like_published(shift: float) -> pd.DataFrame:
    """A sweep whose `fql` runs are the published fql rows plus `shift`, beside the published rows
    and an `fql[alpha=3]` variant (same numbers) that must not be paired."""
    published = analysis.load_published(methods=[METHOD])
    published = published[published["phase"] == "offline"]
    ours = published.assign(
        variant=METHOD, source="sweep", sweep="synthetic", success=published["success"] + shift
    )
    other = ours.assign(variant=f"{METHOD}[alpha=3]")
    records = pd.concat([ours, other, published], ignore_index=True)
    records.attrs.update(published.attrs)
    return records


def pairs(shift: float) -> pd.DataFrame:
    records = sweep_like_published(shift)
    board = analysis.leaderboard(records, metric="mean", reps=200, progress=False)
    return versus_published(board, records)


def test_equal_numbers_show_no_marker_and_a_shift_of_20_points_shows_it_everywhere():
    equal, shifted = pairs(0.0), pairs(0.2)
    for table in (equal, shifted):
        assert set(table["variant"]) == {METHOD, f"{METHOD}[alpha=3]"}
        lone = table[table["variant"] != METHOD]
        assert lone["published"].isna().all() and lone["outside_ci"].isna().all()
        assert len(table[table["variant"] == METHOD]) == 11  # 10 domains and all tasks
    ours = equal[equal["variant"] == METHOD]
    assert (ours["value"] - ours["published"]).abs().max() < 1e-9
    assert not ours["outside_ci"].any()
    moved = shifted[shifted["variant"] == METHOD]
    assert (moved["value"] - moved["published"]).round(6).eq(20.0).all()
    assert moved["outside_ci"].all()
    assert (moved["n_tasks"] == moved["published_n_tasks"]).all() and (moved["n_seeds"] == 12).all()
    text = render_versus(shifted)
    assert text.count(OUTSIDE_MARK) == 11 + 1  # every pair, plus the legend
    assert "5 x 12 / 5 x 12" in text and "50 x 12 / 50 x 12" in text


def test_cli_leaderboard_prints_the_pairs_with_published(tiny_sweep, capsys):
    args = ["leaderboard", str(tiny_sweep), "--published", "--reps", "20", "--no-progress"]
    assert analysis_main(args) == 0
    out = capsys.readouterr().out
    assert "Against the published results" in out
    fql_line = next(line for line in out.splitlines() if line.startswith("| cube-double-play | fql |"))
    assert "1 x 2 / 1 x 12" in fql_line  # one task and two seeds here; the paper's 12 seeds there


def test_published_names_cover_the_papers_methods():
    names = set(analysis.load_published()["method"])
    expected = {"qam", "qam-edit", "qam-fql", "fql", "fbrac", "fedit", "dsrl", "cgql", "cgql-m", "cgql-l"}
    expected |= {"ifql", "fawac", "bam", "rebrac", "qsm", "dac", "rlpd"}
    assert names == expected
    assert set(analysis.load_published(methods=["CGQL-M"])["source"]) == {PUBLISHED}
