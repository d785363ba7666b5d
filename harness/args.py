"""Argument helpers shared by the commands (harness/cli.py, harness/sweep/, harness/bench.py):
KEY=VALUE lists, evaluation grids, seed lists, the budget flags with their defaults, the
`--logger` flag, and the library warnings every command silences. Imports nothing heavy: the
run room only inside `budget_from_args`."""

from __future__ import annotations

import argparse
import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from harness.errors import UserError


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """['alpha=300', 'rho=0'] -> {'alpha': '300', 'rho': '0'}."""
    parsed: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_eval_grid(items: Sequence[str] | None) -> list[dict[str, float]]:
    """['guidance_weight=0.004,0.01'] -> [{'guidance_weight': 0.004}, {'guidance_weight': 0.01}]."""
    values: dict[str, list[float]] = {}
    for key, text in parse_assignments(items, "--eval-param").items():
        try:
            values[key] = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--eval-param {key} expects comma-separated numbers, got {text!r}") from None
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())] if values else []


def parse_seeds(value: Any) -> list[int]:
    """12 -> seeds 0..11; '0,3,7', '0-2,5', '3,' (the seed 3 alone) or [0, 3, 7] -> those seeds."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    elif isinstance(value, str):
        value = [seed for item in value.split(",") if item.strip() for seed in _seed_range(item.strip())]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
        if len(set(value)) != len(value):
            raise UserError(f"--seeds repeats a seed: {value}")
        return list(value)
    raise UserError(
        f"--seeds expects a count (12) or seeds (0,3,7 or 0-5 or 3, for seed 3 alone), got {value!r}"
    )


def _seed_range(item: str) -> list[Any]:
    low, sep, high = item.partition("-")
    if sep and low.strip().isdigit() and high.strip().isdigit():
        return list(range(int(low), int(high) + 1))
    return [int(item) if item.isdigit() else item]


def add_budget_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("budget (defaults: the suite's)")
    group.add_argument("--offline-steps", type=int, help="offline gradient steps")
    group.add_argument(
        "--online-steps",
        type=int,
        help="online environment steps after the offline phase (fine-tuning while acting; 0: none)",
    )
    group.add_argument(
        "--online-warmup-steps",
        type=int,
        help="online updates begin at this online step, when that many online transitions are "
        "in the buffer (default 5000)",
    )
    group.add_argument(
        "--utd-ratio", type=int, help="updates per online environment step (update-to-data ratio, default 1)"
    )
    group.add_argument(
        "--balanced-sampling",
        action=argparse.BooleanOptionalAction,
        help="online phase: every batch half offline data, half online transitions, and the warm-up "
        "steps before the first update act uniformly at random, as the RLPD reference (default: off, "
        "or the method's protocol: on for rlpd)",
    )
    group.add_argument(
        "--eval-interval", type=int, help="evaluate every N steps (and at the end of each phase)"
    )
    group.add_argument("--eval-episodes", type=int, help="episodes per evaluation")
    group.add_argument(
        "--eval-envs",
        type=int,
        help="environments evaluating in lockstep, one batched policy call per chunk for all "
        "(default 10, at most --eval-episodes; part of the run's identity: it decides each episode's noise)",
    )
    group.add_argument("--log-interval", type=int, help="training metrics every N steps (default 5000)")
    group.add_argument(
        "--checkpoint-interval", type=int, help="checkpoint every N steps (default: eval interval)"
    )


def budget_from_args(
    args: argparse.Namespace, suite_budgets: dict[str, int], protocol: Mapping[str, Any] | None = None
):
    """The run's Budget: the suite's budgets, then a method's `protocol` (see `apply_protocol`),
    then the user's flags (None: not given)."""
    from harness.run.spec import Budget

    defaults = Budget()
    values = {
        name: suite_budgets.get(name, getattr(defaults, name)) for name in ("offline_steps", "online_steps")
    }
    values.update(eval_interval=suite_budgets.get("eval_interval", defaults.eval_interval))
    values.update(eval_episodes=suite_budgets.get("eval_episodes", defaults.eval_episodes))
    for name in ("offline_steps", "online_steps", "eval_interval", "eval_episodes"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    for name in ("online_warmup_steps", "utd_ratio", "eval_envs", "balanced_sampling"):
        given = getattr(args, name, None)
        values[name] = suite_budgets.get(name, getattr(defaults, name)) if given is None else given
    apply_protocol(values, args, protocol)
    values["log_interval"] = args.log_interval or min(defaults.log_interval, values["eval_interval"])
    values["checkpoint_interval"] = args.checkpoint_interval or values["eval_interval"]
    return Budget(**values)


def apply_protocol(
    values: dict[str, Any], args: argparse.Namespace, protocol: Mapping[str, Any] | None
) -> None:
    """A method's own protocol (its Agent's `protocol`, e.g. RLPD's online-only {"offline_steps": 0,
    "balanced_sampling": True}) replaces the suite's budget values, except those the user gave.
    It applies only to runs with an online phase: under an offline-only budget such a method
    trains offline like every other."""
    if not protocol or values["online_steps"] <= 0:
        return
    for name, value in protocol.items():
        if getattr(args, name, None) is None:
            values[name] = value


LOGGERS = ("tensorboard", "wandb")


def add_logger_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--logger",
        action="append",
        choices=(*LOGGERS, "none"),
        metavar="NAME",
        help="also send the records' train and eval rows to an experiment tracker: tensorboard "
        "(RUN_DIR/tensorboard/) or wandb (offline into RUN_DIR/wandb/ unless W&B is configured); "
        "repeat the flag for both (default: none)",
    )


def parse_loggers(names: Sequence[str] | None) -> list[str]:
    """--logger values (or a TOML spec's `loggers`) -> tracker names, each once, 'none' dropped."""
    names = list(dict.fromkeys(names or []))
    unknown = [name for name in names if name not in (*LOGGERS, "none")]
    if unknown:
        raise UserError(f"unknown logger {unknown[0]!r}; use tensorboard, wandb or none")
    if "none" in names and len(names) > 1:
        raise UserError("--logger none cannot be combined with another logger")
    return [name for name in names if name != "none"]


def quiet_library_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable is missing.*")
