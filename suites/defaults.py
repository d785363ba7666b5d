"""OGBench tasks outside every suite: the state-based OGBench datasets and the settings their tasks get.

A task `<dataset>-singletask[-task<N>]-v0` (N = 1..5) of a dataset below runs under any suite. When
the suite has its domain, it takes that domain's settings; otherwise the shared protocol's rules,
applied by environment family:

    horizon   5 on manipulation (cube, puzzle, scene), 1 on locomotion (pointmaze, antmaze,
              humanoidmaze, antsoccer): the protocol's action chunks
    discount  0.99; 0.995 on humanoidmaze and the giant mazes (the protocol's antmaze-giant and
              humanoidmaze, extended to pointmaze-giant: the same long-horizon maze)
    sparse    on puzzle and scene (r' = -1 if r != 0 else 0), dense elsewhere
    rho       0.5; 0 on humanoidmaze
    dataset   `<domain>-v0` (cube-octuple-play: only the 100M shard directory exists)

Methods then run with their class defaults (no per-domain hyperparameters) and the suite's budgets
and config overrides. OGBench's pixel-based tasks (`visual-*`) are named in a clear error: the
harness's networks take state vectors. Pure data; the dataset list follows OGBench's
data_gen_scripts/commands.sh, the family rules the QAM paper's shared protocol.
"""

from __future__ import annotations

import re
from typing import Any

from suites import SuiteError

LOCOMOTION = ("pointmaze", "antmaze", "humanoidmaze", "antsoccer")
MANIPULATION = ("cube", "puzzle", "scene")
SPARSE_FAMILIES = ("puzzle", "scene")
VISUAL_FAMILIES = ("antmaze", "humanoidmaze", "cube", "puzzle", "scene")  # those with `visual-` datasets
TASK_IDS = (1, 2, 3, 4, 5)


def _product(prefixes: tuple[str, ...], kinds: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{p}-{k}" for p in prefixes for k in kinds)


# OGBench's state-based datasets, as domains (the dataset name without `-v0`), family by family.
DATASETS: tuple[str, ...] = (
    *_product(("pointmaze-medium", "pointmaze-large", "pointmaze-giant", "pointmaze-teleport"), ("navigate", "stitch")),
    *_product(("antmaze-medium", "antmaze-large", "antmaze-giant", "antmaze-teleport"), ("navigate", "stitch")),
    *_product(("antmaze-medium", "antmaze-large", "antmaze-teleport"), ("explore",)),
    *_product(("humanoidmaze-medium", "humanoidmaze-large", "humanoidmaze-giant"), ("navigate", "stitch")),
    *_product(("antsoccer-arena", "antsoccer-medium"), ("navigate", "stitch")),
    *_product(("cube-single", "cube-double", "cube-triple", "cube-quadruple"), ("play", "noisy")),
    "cube-octuple-play",
    *_product(("scene",), ("play", "noisy")),
    *_product(("puzzle-3x3", "puzzle-4x4", "puzzle-4x5", "puzzle-4x6"), ("play", "noisy")),
)  # fmt: skip
ONLY_SHARDS = {"cube-octuple-play": "cube-octuple-play-100m-v0"}  # no 1M dataset, only the 100M one

_NAME_RE = re.compile(r"^(?P<domain>.+)-singletask(?:-task(?P<id>\d+))?-v0$")


def family_of(domain: str) -> str:
    """`antmaze-large-navigate` -> `antmaze`, `cube-single-play` -> `cube`."""
    return domain.split("-", 1)[0]


def kind_of(domain: str) -> str:
    return "locomotion" if family_of(domain) in LOCOMOTION else "manipulation"


def default_settings(domain: str) -> dict[str, Any]:
    """The shared protocol's settings for a domain of DATASETS (TaskSettings fields but task/domain)."""
    family = family_of(domain)
    long_maze = family == "humanoidmaze" or (family in LOCOMOTION and "-giant-" in domain)
    return {
        "horizon": 1 if family in LOCOMOTION else 5,
        "discount": 0.995 if long_maze else 0.99,
        "sparse": family in SPARSE_FAMILIES,
        "rho": 0.0 if family == "humanoidmaze" else 0.5,
        "dataset": f"{domain}-v0",
        "shard_dir": ONLY_SHARDS.get(domain),
    }


def task_names(domain: str) -> list[str]:
    """Every single-task name of a domain: its default task, then task1..task5."""
    return [f"{domain}-singletask-v0", *(f"{domain}-singletask-task{i}-v0" for i in TASK_IDS)]


def known_tasks() -> list[str]:
    """Every OGBench single-task name that runs outside a suite."""
    return [name for domain in DATASETS for name in task_names(domain)]


def ogbench_domain(task: str) -> str | None:
    """The domain of an OGBench single-task name the harness can train on, or None for a name
    OGBench does not know. Raises SuiteError (with the reason) for OGBench's pixel-based tasks."""
    match = _NAME_RE.match(task)
    if match is None or (match.group("id") is not None and int(match.group("id")) not in TASK_IDS):
        return None
    domain = match.group("domain")
    if domain in DATASETS:
        return domain
    state_domain = domain.removeprefix("visual-")
    if state_domain != domain and state_domain in DATASETS and _has_visual(state_domain):
        raise SuiteError(
            f"{task!r} is OGBench's pixel-based version of {state_domain!r}: the harness's networks take "
            f"state vectors; use '{task.removeprefix('visual-')}'"
        )
    return None


def _has_visual(domain: str) -> bool:
    return family_of(domain) in VISUAL_FAMILIES and domain not in ONLY_SHARDS
