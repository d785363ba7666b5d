"""analysis/: records in, rliable statistics, leaderboards, comparisons, plots and reports out.

Most tests run on a synthetic sweep directory written here in the records format (run
directories with spec.json, status.json, evals.parquet, and sweep.json): 5 variants, 4 tasks in 2
domains, 3 seeds, offline and online steps, one failed run, one NaN row, a variant run with fewer
seeds, and a qgf-like variant evaluated with 3 guidance weights. One test uses the harness's
`tiny_sweep` fixture (real `flowarena run` output).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from rliable import library as rly
from rliable import metrics

import analysis
from analysis import AnalysisError
from analysis.cli import main, register
from analysis.records import RunTable, run_table

REPS = 120
SEED = 7
CUBE = ["cube-double-play-singletask-task1-v0", "cube-double-play-singletask-task2-v0"]
PUZZLE = ["puzzle-3x3-play-singletask-task1-v0", "puzzle-3x3-play-singletask-task2-v0"]
TASKS = CUBE + PUZZLE
WEIGHTS = ["guidance_weight=0.01", "guidance_weight=0.02", "guidance_weight=0.04"]
STEPS = [("offline", 100), ("offline", 200), ("offline", 300), ("online", 400), ("online", 500)]
FINAL = 300
# variant: (method, base success, seeds it ran)
VARIANTS = {
    "qam": ("qam", 0.6, [0, 1, 2]),
    "fql": ("fql", 0.4, [0, 1, 2]),
    "qam[inv_temp=3]": ("qam", 0.5, [0, 1, 2]),
    "qgf": ("qgf", 0.3, [0, 1, 2]),
    "fbrac": ("fbrac", 0.2, [0, 1]),
}
FAILED_RUN = ("fql", PUZZLE[1], 2)
NAN_ROW = ("qam", CUBE[0], 1, FINAL)
RLIABLE_METRICS = {
    "iqm": metrics.aggregate_iqm,
    "mean": metrics.aggregate_mean,
    "median": metrics.aggregate_median,
    "optimality_gap": metrics.aggregate_optimality_gap,
}


def _success(rng, base: float, method: str, task: str, weight_index: int, step: int) -> float:
    bonus = 0.0
    if method == "qgf":  # the best weight differs by domain: the largest on cube, the smallest on puzzle
        bonus = 0.2 * weight_index if task in CUBE else 0.2 * (2 - weight_index)
    return float(np.clip(base + bonus + step / 2000 + rng.normal(0, 0.1), 0, 1))


def _eval_rows(sweep: str, variant: str, task: str, seed: int, rng) -> pd.DataFrame:
    method, base, _ = VARIANTS[variant]
    rows = []
    for phase, step in STEPS:
        params = WEIGHTS if method == "qgf" else [""]
        for i, param in enumerate(params):
            success = _success(rng, base, method, task, i, step)
            if (variant, task, seed, step) == NAN_ROW:
                success = float("nan")
            rows.append(
                {
                    "sweep": sweep, "method": method, "variant": variant, "task": task,
                    "domain": task.split("-singletask")[0], "seed": seed, "phase": phase, "step": step,
                    "success": success, "return": success * 10, "episode_length": 100.0, "n_episodes": 10,
                    "eval_params": param, "wall_time_s": 1.5,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def write_sweep(root: Path) -> pd.DataFrame:
    """Write the synthetic sweep; return every eval row written (the ground truth)."""
    rng = np.random.default_rng(0)
    planned, frames = [], []
    for variant, (method, _, seeds) in VARIANTS.items():
        for task in TASKS:
            for seed in seeds:
                run_dir = root / variant / task / f"seed{seed}"
                run_dir.mkdir(parents=True)
                planned.append(
                    {
                        "method": method,
                        "variant": variant,
                        "task": task,
                        "seed": seed,
                        "run_dir": str(run_dir),
                    }
                )
                (run_dir / "spec.json").write_text(json.dumps({"method": method, "task": task, "seed": seed}))
                if (variant, task, seed) == FAILED_RUN:
                    status = {"state": "failed", "step": 0, "error": "dataset missing"}
                    (run_dir / "status.json").write_text(json.dumps(status))
                    continue
                (run_dir / "status.json").write_text(
                    json.dumps({"state": "done", "step": 500, "error": None})
                )
                frame = _eval_rows(root.name, variant, task, seed, rng)
                frame.to_parquet(run_dir / "evals.parquet")
                frames.append(frame)
    (root / "sweep.json").write_text(json.dumps({"runs": planned}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps") / "synth"
    truth = write_sweep(root)
    return root, truth


@pytest.fixture(scope="module")
def records(synthetic):
    return analysis.load(synthetic[0])


def matrix(truth, variant, tasks, seeds, step=FINAL, params=None) -> np.ndarray:
    """(seeds, tasks) built straight from the written rows; `params` maps task -> eval_params."""
    rows = truth[(truth["variant"] == variant) & (truth["step"] == step)]
    columns = []
    for task in tasks:
        own = rows[(rows["task"] == task) & (rows["eval_params"] == (params or {}).get(task, ""))]
        columns.append(own.set_index("seed").loc[seeds, "success"].to_numpy())
    return np.stack(columns, axis=1)


def rliable_direct(scores, func, reps=REPS, ci=0.95, seed=SEED):
    np.random.seed(seed)
    points, intervals = rly.get_interval_estimates(
        {"x": scores}, func, reps=reps, confidence_interval_size=ci
    )
    return points["x"], intervals["x"]


def cell(table, variant, group, metric=None, row="group"):
    found = table[(table["variant"] == variant) & (table[row] == group)]
    return (found[found["metric"] == metric] if metric else found).iloc[0]


def best_weights(truth) -> dict[str, str]:
    """task -> the guidance weight with the best mean final success over its domain's tasks and seeds."""
    qgf = truth[(truth["variant"] == "qgf") & (truth["step"] == FINAL)]
    chosen = {}
    for tasks in (CUBE, PUZZLE):
        means = qgf[qgf["task"].isin(tasks)].groupby("eval_params")["success"].mean()
        chosen.update(dict.fromkeys(tasks, means.idxmax()))
    return chosen


# --- reading records -------------------------------------------------------------------------


def test_import_never_loads_torch():
    code = (
        "import sys, pkgutil, importlib, analysis\n"
        "for m in pkgutil.walk_packages(analysis.__path__, 'analysis.'):\n"
        "    importlib.import_module(m.name)\n"
        "analysis.load_published\n"
        "assert 'torch' not in sys.modules, 'analysis imported torch'\n"
        "print(len(list(pkgutil.walk_packages(analysis.__path__))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 9  # every module was imported, not an empty walk
    cheap = "import sys, analysis.cli; assert 'rliable' not in sys.modules and 'pandas' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", cheap], timeout=60).returncode == 0


def test_load_reads_run_directories_or_the_collected_file(synthetic, records, tmp_path):
    root, truth = synthetic
    assert "run directories" in records.attrs["loaded_from"]
    assert len(records) == len(truth)
    assert set(records["source"]) == {"sweep"}
    runs = run_table(records)
    assert len(runs) == 4 * 3 * 4 + 4 * 2 and runs["planned"].all()
    assert runs.set_index(["variant", "task", "seed"]).loc[FAILED_RUN, "state"] == "failed"
    subset = records[records["seed"] == 0]
    assert isinstance(subset.attrs["runs"], RunTable) and subset.attrs["runs"] is records.attrs["runs"]

    pd.concat([pd.read_parquet(p) for p in root.glob("*/*/seed*/evals.parquet")]).to_parquet(
        tmp_path / "evals.parquet"
    )
    collected = analysis.load(tmp_path)
    assert "collected records" in collected.attrs["loaded_from"] and collected.attrs["notes"] == []
    copy = shutil.copytree(root, tmp_path / "copy")
    (tmp_path / "evals.parquet").rename(copy / "evals.parquet")
    newer = next(copy.glob("qam/*/seed0/evals.parquet"))
    os.utime(newer, (newer.stat().st_mtime + 60, newer.stat().st_mtime + 60))
    assert "1 run(s) wrote evals after" in analysis.load(copy).attrs["notes"][0]
    key = ["variant", "task", "seed", "step", "eval_params"]
    left = collected.sort_values(key).reset_index(drop=True)
    right = records.sort_values(key).reset_index(drop=True)
    pd.testing.assert_series_equal(left["success"], right["success"])


def test_bad_sweeps_raise_one_clear_error(tmp_path, records):
    with pytest.raises(AnalysisError, match="no such sweep directory"):
        analysis.load(tmp_path / "nope")
    with pytest.raises(AnalysisError, match="no records"):
        analysis.load(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"method": ["qam"], "success": [0.5]}).to_parquet(bad / "evals.parquet")
    with pytest.raises(AnalysisError, match="lack column"):
        analysis.load(bad)
    dup = tmp_path / "dup"
    dup.mkdir()
    pd.concat([records.head(3), records.head(1)]).drop(columns="source").to_parquet(dup / "evals.parquet")
    with pytest.raises(AnalysisError, match="duplicated eval rows"):
        analysis.load(dup)


def test_published_rows_are_mapped_and_labelled():
    published = analysis.load_published()
    assert len(published) == 294000
    assert {"qam", "qam-edit", "qam-fql", "fql", "fbrac", "rebrac", "rlpd"} <= set(published["method"])
    assert (published["variant"] == published["method"] + " (published)").all()
    assert set(published["source"]) == {"published"} and published["task"].nunique() == 50
    assert set(analysis.load_published(methods=["QAM-E"])["variant"]) == {"qam-edit (published)"}
    with pytest.raises(AnalysisError, match="not in the published reference"):
        analysis.load_published(methods=["qgf"])


def test_published_leaderboard_reproduces_the_paper_headline():
    published = analysis.load_published(methods=["qam", "qam-edit", "qam-fql", "fql", "fbrac"])
    board = analysis.leaderboard(published, metric="mean", reps=20, progress=False)
    totals = board[board["row"] == "all tasks"].set_index("variant")
    headline = {"qam": 44.4, "qam-edit": 45.7, "qam-fql": 45.4, "fql": 35.7, "fbrac": 10.8}
    assert {m: round(totals.loc[f"{m} (published)", "value"], 1) for m in headline} == headline
    assert (totals["step"] == 1_000_000).all() and (totals["n_tasks"] == 50).all()
    assert (totals["n_seeds"] == 12).all() and (totals["status"] == "complete").all()
    assert totals["best"].sum() == 1 and totals.loc["qam-edit (published)", "best"]
    assert len(board) == 5 * 11


def test_published_rows_are_never_mixed_into_the_sweep(synthetic, records):
    both = analysis.load(synthetic[0], published=True)
    extra = both[both["source"] == "published"]
    assert set(extra["variant"]) == {"qam (published)", "fql (published)", "fbrac (published)"}
    assert set(extra["task"]) == set(TASKS)
    alone = analysis.leaderboard(records, reps=REPS, seed=SEED, progress=False)
    beside = analysis.leaderboard(both, reps=REPS, seed=SEED, progress=False)
    for variant in VARIANTS:
        for row in ("cube-double-play", "puzzle-3x3-play", "all tasks"):
            a, b = cell(alone, variant, row, row="row"), cell(beside, variant, row, row="row")
            assert [a["value"], a["ci_low"]] == pytest.approx([b["value"], b["ci_low"]], nan_ok=True)
    with pytest.raises(AnalysisError, match="different sources"):
        analysis.compare(both, "qam", "qam (published)", reps=0, progress=False)


# --- aggregates equal rliable ----------------------------------------------------------------


def test_aggregates_equal_rliable_called_directly(records, synthetic):
    truth = synthetic[1]
    table = analysis.aggregate(records, reps=REPS, ci=0.9, seed=SEED, progress=False)
    cases = [
        ("qam[inv_temp=3]", "cube-double-play", CUBE, [0, 1, 2]),
        ("qam[inv_temp=3]", "all tasks", TASKS, [0, 1, 2]),
        ("fbrac", "all tasks", TASKS, [0, 1]),
        ("fql", "cube-double-play", CUBE, [0, 1, 2]),
    ]
    for variant, group, tasks, seeds in cases:
        scores = matrix(truth, variant, tasks, seeds)
        for name, func in RLIABLE_METRICS.items():
            point, interval = rliable_direct(scores, lambda s, f=func: np.array([f(s)]), ci=0.9)
            row = cell(table, variant, group, name)
            assert row["value"] == pytest.approx(func(scores)) == pytest.approx(point[0])
            assert [row["ci_low"], row["ci_high"]] == pytest.approx(interval[:, 0])
            assert (row["n_tasks"], row["n_seeds"], row["step"]) == (len(tasks), len(seeds), FINAL)
        mean = cell(table, variant, group, "mean")
        assert mean["ci_low"] < mean["value"] < mean["ci_high"]


def test_bootstrap_is_seeded_and_leaves_numpy_state_alone(records):
    np.random.seed(123)
    expected_draw = np.random.rand()
    np.random.seed(123)
    first = analysis.aggregate(records, metrics=["mean"], by="all", reps=50, seed=3, progress=False)
    assert np.random.rand() == expected_draw
    again = analysis.aggregate(records, metrics=["mean"], by="all", reps=50, seed=3, progress=False)
    other = analysis.aggregate(records, metrics=["mean"], by="all", reps=50, seed=4, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["ci_low"].dropna(), other["ci_low"].dropna())


def test_aggregate_at_any_step_and_learning_curves_equal_rliable(records, synthetic):
    truth = synthetic[1]
    at_200 = analysis.aggregate(
        records, metrics=["iqm"], step=200, by="all", reps=REPS, seed=SEED, progress=False
    )
    scores = matrix(truth, "qam[inv_temp=3]", TASKS, [0, 1, 2], step=200)
    point, interval = rliable_direct(scores, lambda s: np.array([metrics.aggregate_iqm(s)]))
    row = cell(at_200, "qam[inv_temp=3]", "all tasks", "iqm")
    assert [row["value"], row["ci_low"], row["ci_high"]] == pytest.approx([point[0], *interval[:, 0]])
    assert row["step"] == 200

    curves = analysis.aggregate(
        records, metrics=["mean", "iqm"], step="all", by="all", reps=REPS, seed=SEED, progress=False
    )
    steps = [100, 200, 300]
    stacked = np.stack([matrix(truth, "qam[inv_temp=3]", TASKS, [0, 1, 2], step=s) for s in steps], axis=-1)

    def per_step(s):  # rliable's sample-efficiency recipe: every metric at every step
        return np.concatenate(
            [[metrics.aggregate_mean(s[..., i]), metrics.aggregate_iqm(s[..., i])] for i in range(3)]
        )

    point, interval = rliable_direct(stacked, per_step)
    own = curves[curves["variant"] == "qam[inv_temp=3]"].set_index(["step", "metric"])
    for j, step in enumerate(steps):
        for i, name in enumerate(["mean", "iqm"]):
            k = 2 * j + i
            got = own.loc[(step, name)]
            assert [got["value"], got["ci_low"], got["ci_high"]] == pytest.approx([point[k], *interval[:, k]])
    # qam's NaN row at the final step leaves a gap in its curve instead of a silently smaller mean
    qam = curves[(curves["variant"] == "qam") & (curves["metric"] == "mean")].set_index("step")
    assert qam.loc[100, "status"] == "complete" and np.isnan(qam.loc[FINAL, "value"])
    assert qam.loc[FINAL, "status"] == "incomplete"


def test_performance_profile_equals_rliable(records, synthetic):
    taus = np.linspace(0, 1, 11)
    profiles = analysis.performance_profiles(records, taus=taus, reps=REPS, seed=SEED)
    scores = matrix(synthetic[1], "qam[inv_temp=3]", TASKS, [0, 1, 2])
    np.random.seed(SEED)
    expected, intervals = rly.create_performance_profile({"x": scores}, taus, reps=REPS)
    own = profiles[profiles["variant"] == "qam[inv_temp=3]"]
    assert own["fraction"].to_numpy() == pytest.approx(expected["x"])
    assert own[["ci_low", "ci_high"]].to_numpy().T == pytest.approx(intervals["x"])
    assert "qam" not in set(profiles["variant"]) and any("qam:" in n for n in profiles.attrs["notes"])


# --- missing runs, NaN rows, fewer seeds ------------------------------------------------------


def test_missing_runs_are_named_with_their_reason(records):
    missing = analysis.missing_runs(records).set_index(["variant", "task", "seed"])["reason"]
    assert len(missing) == 2 + 4
    assert "failed" in missing[FAILED_RUN] and "dataset missing" in missing[FAILED_RUN]
    assert "NaN" in missing[NAN_ROW[:3]]
    for task in TASKS:
        assert missing[("fbrac", task, 2)].startswith("no records")
    online = analysis.missing_runs(records, phase="online").set_index(["variant", "task", "seed"])
    assert NAN_ROW[:3] not in online.index and FAILED_RUN in online.index


def test_a_run_that_stopped_early_is_named_with_its_last_step(records):
    stopped = ("qam[inv_temp=3]", CUBE[1], 2)
    at = (
        (records["variant"] == stopped[0]) & (records["task"] == stopped[1]) & (records["seed"] == stopped[2])
    )
    cut = records[~(at & (records["step"] >= FINAL))].copy()
    runs = run_table(records).copy()
    running = (runs["variant"] == stopped[0]) & (runs["task"] == stopped[1]) & (runs["seed"] == stopped[2])
    runs.loc[running, ["state", "status_step"]] = ["running", 250.0]
    cut.attrs["runs"] = runs.to_dict("records")
    missing = analysis.missing_runs(cut).set_index(["variant", "task", "seed"])["reason"]
    assert missing[stopped] == "no eval at step 300 (last offline eval at step 200); run running at step 250"
    board = analysis.leaderboard(cut, reps=0, progress=False)
    assert cell(board, stopped[0], "cube-double-play", row="row")["status"] == "incomplete"
    assert cell(board, stopped[0], "puzzle-3x3-play", row="row")["status"] == "complete"


def test_leaderboard_refuses_incomplete_cells_and_says_so(records, synthetic):
    truth = synthetic[1]
    board = analysis.leaderboard(records, reps=REPS, seed=SEED, progress=False)
    for variant, row in [("fql", "puzzle-3x3-play"), ("fql", "all tasks"), ("qam", "cube-double-play")]:
        found = cell(board, variant, row, row="row")
        assert found["status"] == "incomplete" and np.isnan(found["value"])
    fewer = cell(board, "fbrac", "all tasks", row="row")
    assert fewer["status"] == "fewer seeds" and fewer["n_seeds"] == 2
    assert fewer["value"] == pytest.approx(100 * matrix(truth, "fbrac", TASKS, [0, 1]).mean())
    assert cell(board, "qam", "puzzle-3x3-play", row="row")["status"] == "complete"

    text = analysis.render_leaderboard(board, "md")
    header, puzzle = (line for line in text.splitlines() if line.startswith(("| domain", "| puzzle")))
    assert dict(zip(header.split(" | "), puzzle.split(" | "), strict=True))["fql"] == "incomplete"
    assert "†" in text and "missing runs: 6" in text
    assert "dataset missing" in text and "success is NaN at step 300" in text
    assert text.count("fbrac | ") >= 4  # each missing fbrac run has its own line

    kept = analysis.leaderboard(records, incomplete="common-seeds", reps=REPS, seed=SEED, progress=False)
    found = cell(kept, "fql", "puzzle-3x3-play", row="row")
    assert found["status"] == "common seeds" and found["n_seeds"] == 2
    assert found["value"] == pytest.approx(100 * matrix(truth, "fql", PUZZLE, [0, 1]).mean())


def test_leaderboard_marks_the_best_per_row_and_renders_three_formats(records):
    board = analysis.leaderboard(records, metric="optimality_gap", reps=REPS, seed=SEED, progress=False)
    for _, cells in board.groupby("row"):
        values = cells["value"].round(1)
        assert set(cells.loc[cells["best"], "value"].round(1)) == {values.min()}
    latex = analysis.render_leaderboard(board, "latex")
    assert "\\begin{tabular}" in latex and "\\textbf{" in latex and "qam[inv\\_temp=3]" in latex
    assert "% missing runs" in latex
    csv = pd.read_csv(__import__("io").StringIO(analysis.render_leaderboard(board, "csv")))
    assert len(csv) == len(VARIANTS) * 3 and {"value", "ci_low", "ci_high", "status", "best"} <= set(
        csv.columns
    )
    with pytest.raises(AnalysisError, match="bad format"):
        analysis.render_leaderboard(board, "html")


# --- test-time methods ------------------------------------------------------------------------


def test_test_time_variant_best_per_domain(records, synthetic):
    truth = synthetic[1]
    chosen = best_weights(truth)
    assert chosen[CUBE[0]] != chosen[PUZZLE[0]]  # the data make the choice differ by domain
    board = analysis.leaderboard(records, reps=REPS, seed=SEED, progress=False)
    assert cell(board, "qgf", "cube-double-play", row="row")["eval_params"] == chosen[CUBE[0]]
    assert cell(board, "qgf", "puzzle-3x3-play", row="row")["eval_params"] == chosen[PUZZLE[0]]
    total = cell(board, "qgf", "all tasks", row="row")
    assert total["eval_params"] == "best per domain"
    assert total["value"] == pytest.approx(100 * matrix(truth, "qgf", TASKS, [0, 1, 2], params=chosen).mean())
    text = analysis.render_leaderboard(board, "md")
    assert "qgf §" in text and "chosen per domain" in text and chosen[CUBE[0]] in text


def test_test_time_variant_fixed_value(records, synthetic):
    truth = synthetic[1]
    fixed = "fixed:guidance_weight=0.02"
    board = analysis.leaderboard(records, eval_param_selection=fixed, reps=REPS, progress=False)
    params = dict.fromkeys(TASKS, "guidance_weight=0.02")
    total = cell(board, "qgf", "all tasks", row="row")
    assert total["value"] == pytest.approx(100 * matrix(truth, "qgf", TASKS, [0, 1, 2], params=params).mean())
    assert "fixed at guidance_weight=0.02" in " ".join(board.attrs["notes"])
    with pytest.raises(AnalysisError, match="guidance_weight=0.5.*it has guidance_weight=0.01"):
        analysis.leaderboard(
            records, eval_param_selection="fixed:guidance_weight=0.5", reps=0, progress=False
        )
    with pytest.raises(AnalysisError, match="bad eval-param selection"):
        analysis.leaderboard(records, eval_param_selection="best", reps=0, progress=False)


# --- paired comparison ------------------------------------------------------------------------


def test_compare_equals_rliable_and_lists_unpaired_runs(records, synthetic):
    truth = synthetic[1]
    table = analysis.compare(records, "qgf", "qam[inv_temp=3]", reps=REPS, seed=SEED, progress=False)
    assert list(table["group"]) == ["puzzle-3x3-play", "cube-double-play", "all tasks"]
    x = matrix(truth, "qgf", TASKS, [0, 1, 2], params=best_weights(truth))
    y = matrix(truth, "qam[inv_temp=3]", TASKS, [0, 1, 2])
    total = table.set_index("group").loc["all tasks"]
    np.random.seed(SEED)
    poi_point, poi_interval = rly.get_interval_estimates(
        {"x": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=REPS
    )
    assert (
        total["poi"]
        == pytest.approx(metrics.probability_of_improvement(x, y))
        == pytest.approx(poi_point["x"][0])
    )
    assert [total["poi_ci_low"], total["poi_ci_high"]] == pytest.approx(poi_interval["x"][:, 0])
    assert total["delta_mean"] == pytest.approx(100 * (metrics.aggregate_mean(x) - metrics.aggregate_mean(y)))
    assert total["delta_iqm"] == pytest.approx(100 * (metrics.aggregate_iqm(x) - metrics.aggregate_iqm(y)))
    assert total["delta_mean_ci_low"] < total["delta_mean"] < total["delta_mean_ci_high"]
    assert total["n_pairs"] == 12 and table.attrs["unpaired"] == []

    uneven = analysis.compare(records, "fql", "qam", reps=REPS, seed=SEED, progress=False)
    unpaired = {(u["variant"], u["task"], u["seed"]) for u in uneven.attrs["unpaired"]}
    assert FAILED_RUN in unpaired and NAN_ROW[:3] in unpaired
    puzzle = uneven.set_index("group").loc["puzzle-3x3-play"]
    assert puzzle["n_pairs"] == 4 and puzzle["n_seeds"] == 2  # seed 2 lacks a pair on one puzzle task
    text = analysis.render_comparison(uneven)
    assert "Unpaired or dropped runs" in text and "dataset missing" in text


def test_compare_rejects_unknown_variants(records):
    with pytest.raises(AnalysisError, match="unknown variant 'qamm' \\(closest: qam\\)"):
        analysis.compare(records, "qamm", "fql", reps=0, progress=False)
    with pytest.raises(AnalysisError, match="two different variants"):
        analysis.compare(records, "qam", "QAM", reps=0, progress=False)


# --- command line -----------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_registers_the_three_subcommands():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["leaderboard", "published", "--format", "latex", "--step", "1e6", "--metric", "iqm"]
    )
    assert (args.format, args.step, args.metric, args.reps) == ("latex", 1_000_000, "iqm", 2000)
    assert callable(args.func)
    assert parser.parse_args(["compare", "S", "qam", "fql", "--ci", "0.9"]).ci == 0.9
    assert parser.parse_args(["report", "S", "--out", "o", "--pair", "a", "b"]).pair == ["a", "b"]
    for bad in (
        ["leaderboard", "S", "--format", "html"],
        ["leaderboard", "S", "--step", "1.5"],
        ["report", "S"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(bad)
        assert exit_info.value.code == 2


def test_cli_leaderboard_and_compare(synthetic, capsys):
    sweep = str(synthetic[0])
    code, out, err = run_cli(capsys, "leaderboard", sweep, "--format", "csv", "--reps", "50", "--no-progress")
    assert code == 0
    table = pd.read_csv(__import__("io").StringIO(out))
    assert set(table["variant"]) == set(VARIANTS)
    assert "missing: fql puzzle-3x3-play-singletask-task2-v0 seed 2" in err
    code, out, _ = run_cli(
        capsys, "compare", sweep, "qam", "qam[inv_temp=3]", "--reps", "50", "--no-progress"
    )
    assert code == 0 and "P(A > B)" in out and "pairs used" in out
    code, _, err = run_cli(capsys, "compare", sweep, "qam", "nosuch", "--reps", "0", "--no-progress")
    assert code == 2 and "unknown variant 'nosuch'" in err
    code, _, err = run_cli(capsys, "leaderboard", sweep + "-absent", "--no-progress")
    assert code == 2 and "no such sweep directory" in err
    code, _, err = run_cli(capsys, "leaderboard", sweep, "--ci", "1.5", "--no-progress")
    assert code == 2 and "bad ci" in err


# --- report -----------------------------------------------------------------------------------

PLOTS = [
    "learning_curves.png",
    "performance_profile.png",
    "interval_estimates.png",
    "probability_of_improvement.png",
]


def assert_pngs_open(out: Path, report: str) -> None:
    for name in PLOTS:
        assert f"]({name})" in report, f"{name} not linked"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] >= 150 and image.shape[1] >= 300, f"{name}: {image.shape}"
        assert image[..., :3].std() > 0.05, f"{name} is blank"


def test_report_from_the_synthetic_sweep(synthetic, tmp_path):
    out = tmp_path / "report"
    path = analysis.write_report(
        synthetic[0], out, pair=("qgf", "qam[inv_temp=3]"), reps=100, seed=SEED, progress=False
    )
    report = path.read_text()
    for heading in (
        "# flowarena report: synth",
        "## What the records hold",
        "## Leaderboard: Mean success (%) at the final offline step",
        "## Leaderboard: IQM success (%) at the final offline step",
        "## Leaderboard: Mean success (%) at the final online step",
        "## Paired comparison: qgf vs qam[inv_temp=3]",
        "### Learning curves",
        "### Performance profile",
        "### Interval estimates",
        "### Probability of improvement",
    ):
        assert heading in report, heading
    assert "| fbrac | sweep | fbrac | 4 | 0-2 | 8 of 12 |" in report
    assert "dataset missing" in report and "success is NaN at step 300" in report and "qgf §" in report
    assert "Run states (status.json): done 55, failed 1." in report
    assert_pngs_open(out, report)
    for name in ("leaderboard_offline_mean.csv", "leaderboard_offline_mean.tex", "comparison.csv"):
        assert (out / name).stat().st_size > 100
    missing = pd.read_csv(out / "missing_runs_offline.csv")
    assert len(missing) == 6


def test_report_from_a_tiny_real_sweep(request, tmp_path, capsys):
    """End to end on `flowarena run` output: 2 methods, 1 task, 2 seeds (the harness's fixture)."""
    sweep = request.getfixturevalue("tiny_sweep")
    out = tmp_path / "tiny-report"
    code, stdout, stderr = run_cli(
        capsys, "report", str(sweep), "--out", str(out), "--reps", "100", "--no-progress"
    )
    assert code == 0, stderr
    report = (out / "report.md").read_text()
    records = analysis.load(sweep)
    variants = sorted(records["variant"].unique())
    assert len(variants) == 2
    assert "## What the records hold" in report and "## Leaderboard: Mean success (%)" in report
    assert f"## Paired comparison: {variants[0]} vs {variants[1]}" in report
    for variant in variants:
        assert f"| {variant} |" in report
    assert_pngs_open(out, report)
    board = pd.read_csv(out / "leaderboard_offline_mean.csv")
    totals = board[board["row"] == "all tasks"].set_index("variant")
    for variant in variants:
        final = records[(records["variant"] == variant) & (records["phase"] == "offline")]
        final = final[final["step"] == final["step"].max()]
        if totals.loc[variant, "status"] == "complete" and final["eval_params"].nunique() == 1:
            assert totals.loc[variant, "value"] == pytest.approx(100 * final["success"].mean(), abs=1e-3)
