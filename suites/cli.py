"""`flowarena suites [NAME] [--method M] [--json]`: list suites, or one suite's tasks and settings;
`flowarena suites --defaults`: the settings OGBench tasks outside a suite run with.

The harness CLI calls `register(subparsers)`; a SuiteError from here becomes exit code 2 there.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import suites
from suites import defaults


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "suites",
        help="list benchmark suites, or one suite's tasks with their settings",
        description="Without NAME: every suite with its task count. With NAME (a suite name or a .toml "
        "file): its budgets, config overrides and tasks (horizon, discount, sparse, rho, dataset).",
    )
    p.add_argument("name", nargs="?", help="suite name or path of a .toml suite file")
    p.add_argument("--method", help="also show this method's per-domain hyperparameters for each task")
    p.add_argument(
        "--defaults",
        action="store_true",
        help="the settings of OGBench tasks that no suite lists (any state-based OGBench single task runs)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "defaults", False):
        if args.name is not None or args.method:
            raise suites.SuiteError("--defaults takes no suite NAME and no --method")
        rows = _default_rows()
        print(json.dumps(rows, indent=2) if args.json else _format_defaults(rows))
        return 0
    if args.name is None:
        if args.method:
            raise suites.SuiteError("--method needs a suite NAME")
        rows = [_summary(name) for name in suites.suite_names()]
        print(json.dumps(rows, indent=2) if args.json else _format_list(rows))
        return 0
    suite = suites.get_suite(args.name)
    if args.json:
        payload = suite.to_dict()
        if args.method:
            payload["method_overrides"] = {
                t: suite.method_overrides(args.method, t) for t in suite.task_names
            }
        print(json.dumps(payload, indent=2))
    else:
        print(_format_suite(suite, args.method))
    return 0


def _summary(name: str) -> dict[str, Any]:
    suite = suites.get_suite(name)
    domains = {t.domain for t in suite.tasks}
    return {
        "name": name,
        "tasks": len(suite.tasks),
        "domains": len(domains),
        "description": suite.description,
    }


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _format_list(rows: list[dict[str, Any]]) -> str:
    body = [[r["name"], str(r["tasks"]), str(r["domains"]), r["description"]] for r in rows]
    return _table(["suite", "tasks", "domains", "description"], body)


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(_format_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _format_mapping(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_format_value(v)}" for k, v in values.items()) or "(none)"


def _format_suite(suite: suites.Suite, method: str | None) -> str:
    header = ["task", "horizon", "discount", "sparse", "rho", "dataset"]
    if method:
        header.append(suites.normalize_method(method))
    rows = []
    for t in suite.tasks:
        dataset = f"{t.dataset} (shards: {t.shard_dir})" if t.shard_dir else t.dataset
        row = [t.task, str(t.horizon), f"{t.discount:g}", "yes" if t.sparse else "no", f"{t.rho:g}", dataset]
        if method:
            row.append(_format_mapping(suite.method_overrides(method, t.task)))
        rows.append(row)
    lines = [
        f"{suite.name}: {suite.description}",
        f"budgets: {_format_mapping(suite.budgets)}; seeds: {suite.seeds}",
        f"config overrides (every method): {_format_mapping(suite.config_overrides)}",
        "",
        _table(header, rows),
    ]
    return "\n".join(lines)


def _default_rows() -> list[dict[str, Any]]:
    return [
        {
            "domain": d,
            "kind": defaults.kind_of(d),
            **defaults.default_settings(d),
            "tasks": defaults.task_names(d),
        }
        for d in defaults.DATASETS
    ]


def _format_defaults(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        dataset = f"{r['shard_dir']} (shards)" if r["shard_dir"] else r["dataset"]
        sparse = "yes" if r["sparse"] else "no"
        body.append(
            [
                r["domain"],
                r["kind"],
                str(r["horizon"]),
                f"{r['discount']:g}",
                sparse,
                f"{r['rho']:g}",
                dataset,
            ]
        )
    header = ["domain", "kind", "horizon", "discount", "sparse", "rho", "dataset"]
    lines = [
        "Any task '<domain>-singletask-v0' or '<domain>-singletask-task<N>-v0' (N = 1..5) of a domain below",
        "runs under every suite. A suite that has the domain gives its own settings and per-domain",
        "hyperparameters; otherwise the task runs with these defaults (the shared protocol's rules: chunks",
        "of 5 on manipulation and 1 on locomotion, discount 0.995 on humanoidmaze and giant mazes, sparse",
        "rewards on puzzle and scene, rho 0 on humanoidmaze), each method's default hyperparameters, and",
        "the suite's budgets and config overrides. `flowarena run` prints a note saying which it used.",
        "",
        _table(header, body),
    ]
    return "\n".join(lines)
