"""`flowarena report | leaderboard | compare`: the analysis subcommands.

`register(subparsers)` adds them to an argparse subparsers object; each sets `func(args) -> int`.
Bad input raises `analysis.AnalysisError`; the caller prints its message and exits with code 2
(`python -m analysis` does exactly that). Heavy imports happen inside the handlers, so that
registering the subcommands costs nothing.
"""

from __future__ import annotations

import argparse
import sys

SWEEP_HELP = (
    "sweep directory (results/<sweep>), or `published` for the QAM paper's reference rows alone "
    "(`published:quality`, `published:sensitivity`: its studies')"
)
DEFAULT_REPS = 2000


def register(subparsers) -> None:
    """Add the `report`, `leaderboard` and `compare` subcommands."""
    _add_leaderboard(subparsers)
    _add_compare(subparsers)
    _add_report(subparsers)


def _step(text: str) -> int | str:
    """`final` or a whole number of steps (`1000000` or `1e6`)."""
    if text == "final":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"bad step {text!r}: use final or an integer step")
    return int(value)


def _add_statistics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="bootstrap replications (0: no CIs)")
    parser.add_argument("--ci", type=float, default=0.95, help="confidence interval coverage (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    parser.add_argument(
        "--eval-param-selection",
        default="best-per-domain",
        metavar="fixed:KEY=VAL|best-per-domain",
        help="test-time methods (several eval_params per step): one fixed value, or the best per domain",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_leaderboard(subparsers) -> None:
    parser = subparsers.add_parser(
        "leaderboard",
        help="paper-style table: domains x variants, value with CI, best per row marked",
        description="Rows: each domain and all tasks; columns: variants; cells: success (%) with CI.",
    )
    parser.add_argument("sweep", help=SWEEP_HELP)
    parser.add_argument(
        "--published", action="store_true", help="add the published rows of the sweep's methods"
    )
    parser.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    parser.add_argument("--step", type=_step, default="final", help="final (default) or an integer step")
    parser.add_argument("--metric", choices=("iqm", "mean", "median", "optimality_gap"), default="mean")
    parser.add_argument("--phase", choices=("offline", "online"), default="offline")
    parser.add_argument(
        "--incomplete",
        choices=("refuse", "common-seeds"),
        default="refuse",
        help="cells whose tasks have different seeds: no value (default) or the seeds every task has",
    )
    parser.add_argument("--out", help="also write the table to this file")
    _add_statistics(parser)
    parser.set_defaults(func=run_leaderboard)


def _add_compare(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="paired comparison of two variants: P(A > B), per-domain deltas with CIs",
        description="Pairs runs by (task, seed); reports P(A > B) and mean/IQM deltas with bootstrap CIs.",
    )
    parser.add_argument("sweep", help=SWEEP_HELP)
    parser.add_argument("a", help="variant A (e.g. qam or 'qam[inv_temp=3]')")
    parser.add_argument("b", help="variant B")
    parser.add_argument("--step", type=_step, default="final", help="final (default) or an integer step")
    parser.add_argument("--phase", choices=("offline", "online"), default="offline")
    parser.add_argument("--format", choices=("md", "csv"), default="md")
    _add_statistics(parser)
    parser.set_defaults(func=run_compare)


def _add_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="report.md (and with --html one self-contained report.html) with leaderboards, a paired "
        "comparison and plots",
        description="Writes OUT/report.md, the tables as CSV and LaTeX, and the plots as PNG; with --html "
        "also OUT/report.html, the same report in one page that opens from a file.",
    )
    parser.add_argument("sweep", help=SWEEP_HELP)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--published", action="store_true", help="add the published rows of the sweep's methods"
    )
    parser.add_argument("--pair", nargs=2, metavar=("A", "B"), help="the two variants to compare")
    parser.add_argument("--incomplete", choices=("refuse", "common-seeds"), default="refuse")
    parser.add_argument(
        "--html", action="store_true", help="also OUT/report.html: one self-contained page, plots embedded"
    )
    _add_statistics(parser)
    parser.set_defaults(func=run_report)


def run_leaderboard(args: argparse.Namespace) -> int:
    from analysis.records import load_source
    from analysis.tables import leaderboard, render_leaderboard
    from analysis.versus import has_pairs, render_versus, versus_published

    records = load_source(args.sweep, published=args.published)
    board = leaderboard(
        records,
        metric=args.metric,
        step=args.step,
        phase=args.phase,
        reps=args.reps,
        ci=args.ci,
        seed=args.seed,
        eval_param_selection=args.eval_param_selection,
        incomplete=args.incomplete,
        progress=not args.no_progress,
    )
    text = render_leaderboard(board, args.format)
    if args.format == "md" and has_pairs(board):
        text += "\n" + render_versus(versus_published(board, records), args.ci)
    _emit(text, args.out)
    if args.format == "csv":
        for note in board.attrs["notes"]:
            print(f"note: {note}", file=sys.stderr)
        for run in board.attrs["missing"]:
            print(
                f"missing: {run['variant']} {run['task']} seed {run['seed']}: {run['reason']}",
                file=sys.stderr,
            )
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from analysis.paired import compare, render_comparison
    from analysis.records import load_source

    records = load_source(args.sweep)
    table = compare(
        records,
        args.a,
        args.b,
        step=args.step,
        phase=args.phase,
        reps=args.reps,
        ci=args.ci,
        seed=args.seed,
        eval_param_selection=args.eval_param_selection,
        progress=not args.no_progress,
    )
    _emit(render_comparison(table, args.format), None)
    return 0


def run_report(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from analysis.records import load_source
    from analysis.report import write_report

    records = load_source(args.sweep, published=args.published)
    path = write_report(
        records,
        args.out,
        pair=tuple(args.pair) if args.pair else None,
        reps=args.reps,
        ci=args.ci,
        seed=args.seed,
        eval_param_selection=args.eval_param_selection,
        incomplete=args.incomplete,
        progress=not args.no_progress,
        html=args.html,
    )
    print(path)
    return 0


def _emit(text: str, path: str | None) -> None:
    sys.stdout.write(text)
    if path:
        with open(path, "w") as handle:
            handle.write(text)


def main(argv: list[str] | None = None) -> int:
    """`python -m analysis SUBCOMMAND ...`, the same subcommands as `flowarena`."""
    from analysis.errors import AnalysisError

    parser = argparse.ArgumentParser(prog="python -m analysis", description="flowarena analysis")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AnalysisError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
