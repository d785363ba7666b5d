"""D4RL tasks through Minari: their names, their settings, and the `d4rl` suite.

A D4RL task is a Minari dataset of the `D4RL` namespace for AntMaze or Adroit, named on the command
line by its Minari id (`D4RL/antmaze/large-diverse-v1`) or by the run-directory name the harness
uses for it (`D4RL-antmaze-large-diverse-v1`: the id with `/` as `-`). Its domain is the
environment and dataset without the version (`antmaze-large-diverse`, `pen-human`): the FQL
README sets FQL's hyperparameters per task, so every task is a domain of its own.

The `d4rl` suite holds the 18 tasks of the FQL paper's D4RL table, under the Minari ids that
Minari's documentation lists (AntMaze `-v1`, Adroit `-v2`), with the per-task settings of the FQL
repository's README for FQL: horizon 1 (FQL does not chunk actions), discount 0.99 (its default),
500K offline steps, `alpha` per task, and `q_agg=min` on Adroit (mean on AntMaze). FQL's two
critics are our FQL with `num_critics = 2`; with two critics the population-std pessimism
`mean - rho * std` is the mean at rho 0 and the minimum at rho 1, so q_agg mean/min is rho 0/1.
The other methods run with their class defaults (the QAM protocol's rho 0.5 for ensembles): the
FQL README gives no D4RL values for them. Evaluation: 50 episodes every 100K steps (FQL's
defaults); 8 seeds. Pure data: importing it never imports torch.
"""

from __future__ import annotations

import re
from typing import Any

from suites import Suite, TaskSettings

NAMESPACE = "D4RL"
ANTMAZE = "antmaze"
ADROIT = "adroit"
# Minari environment name -> family (the conventions of the authors' loader differ by family)
FAMILIES = {"antmaze": ANTMAZE, "pen": ADROIT, "door": ADROIT, "hammer": ADROIT, "relocate": ADROIT}
_NAME_RE = re.compile(
    rf"^{NAMESPACE}[/-](?P<env>{'|'.join(FAMILIES)})[/-](?P<data>[a-z]+(?:-[a-z]+)*)-v(?P<version>\d+)$"
)

ANTMAZE_DATASETS = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")
ADROIT_DATASETS = ("human", "cloned", "expert")
ANTMAZE_VERSION, ADROIT_VERSION = 1, 2  # the Minari versions Minari's documentation lists

# The FQL README's D4RL commands (offline RL, 500K steps): task -> (alpha, q_agg).
FQL_README: dict[str, tuple[float, str]] = {
    "antmaze-umaze": (10, "mean"),
    "antmaze-umaze-diverse": (10, "mean"),
    "antmaze-medium-play": (10, "mean"),
    "antmaze-medium-diverse": (10, "mean"),
    "antmaze-large-play": (3, "mean"),
    "antmaze-large-diverse": (3, "mean"),
    "pen-human": (10_000, "min"),
    "pen-cloned": (10_000, "min"),
    "pen-expert": (3_000, "min"),
    "door-human": (30_000, "min"),
    "door-cloned": (30_000, "min"),
    "door-expert": (30_000, "min"),
    "hammer-human": (30_000, "min"),
    "hammer-cloned": (10_000, "min"),
    "hammer-expert": (30_000, "min"),
    "relocate-human": (10_000, "min"),
    "relocate-cloned": (30_000, "min"),
    "relocate-expert": (30_000, "min"),
}
Q_AGG_RHO = {"mean": 0.0, "min": 1.0}  # with FQL's two critics (module docstring)
FQL_CRITICS = 2
BUDGETS = {"offline_steps": 500_000, "online_steps": 0, "eval_interval": 100_000, "eval_episodes": 50}
SEEDS = 8
METHODS_NOTE = (
    "FQL takes the FQL README's per-task alpha and q_agg (as num_critics 2 and rho 0/1); the FQL "
    "README gives no D4RL values for other methods, which run with their class defaults"
)


def parse(task: str) -> tuple[str, str, int] | None:
    """`D4RL/antmaze/umaze-v1` or `D4RL-antmaze-umaze-v1` -> ("antmaze", "umaze", 1), for the
    datasets of the FQL paper's table at any version; None for any other name."""
    match = _NAME_RE.match(task)
    if match is None:
        return None
    env, data = match.group("env"), match.group("data")
    if data not in (ANTMAZE_DATASETS if FAMILIES[env] == ANTMAZE else ADROIT_DATASETS):
        return None  # not a D4RL dataset: the name gets the message for unknown tasks
    return env, data, int(match.group("version"))


def is_d4rl(task: str) -> bool:
    return parse(task) is not None


def _parts(task: str) -> tuple[str, str, int]:
    parts = parse(task)
    if parts is None:
        raise ValueError(f"{task!r} is not a D4RL task name (e.g. D4RL/antmaze/umaze-v1)")
    return parts


def task_name(task: str) -> str:
    """The harness's name of a D4RL task: `D4RL-antmaze-umaze-v1` (no `/`: it names a directory)."""
    env, data, version = _parts(task)
    return f"{NAMESPACE}-{env}-{data}-v{version}"


def minari_id(task: str) -> str:
    """`D4RL-antmaze-umaze-v1` -> `D4RL/antmaze/umaze-v1`."""
    env, data, version = _parts(task)
    return f"{NAMESPACE}/{env}/{data}-v{version}"


def domain(task: str) -> str:
    """`D4RL-antmaze-umaze-v1` -> `antmaze-umaze`, `D4RL/pen/human-v2` -> `pen-human`."""
    env, data, _ = _parts(task)
    return f"{env}-{data}"


def family(task: str) -> str:
    """`antmaze` or `adroit`."""
    return FAMILIES[_parts(task)[0]]


def default_settings(task: str) -> dict[str, Any]:
    """TaskSettings fields (but task and domain) of any D4RL task: FQL's horizon and discount."""
    return {"horizon": 1, "discount": 0.99, "sparse": False, "rho": 0.5, "dataset": minari_id(task)}


def settings(task: str) -> TaskSettings:
    return TaskSettings(task=task_name(task), domain=domain(task), **default_settings(task))


def suite_tasks() -> list[str]:
    """The FQL paper's 18 D4RL tasks as Minari ids, in its table's order."""
    antmaze = [f"{NAMESPACE}/antmaze/{d}-v{ANTMAZE_VERSION}" for d in ANTMAZE_DATASETS]
    adroit = [
        f"{NAMESPACE}/{env}/{d}-v{ADROIT_VERSION}"
        for env in FAMILIES
        if env != "antmaze"
        for d in ADROIT_DATASETS
    ]
    return antmaze + adroit


def fql_methods() -> dict[str, dict[str, dict[str, Any]]]:
    """domain -> {"fql": overrides} from FQL_README."""
    return {
        name: {"fql": {"alpha": float(alpha), "num_critics": FQL_CRITICS, "rho": Q_AGG_RHO[q_agg]}}
        for name, (alpha, q_agg) in FQL_README.items()
    }


def d4rl_suite() -> Suite:
    tasks = [settings(t) for t in suite_tasks()]
    return Suite(
        name="d4rl",
        description="FQL paper: 18 D4RL tasks (6 AntMaze, 12 Adroit) through Minari, 500K offline steps",
        tasks=tasks,
        budgets=dict(BUDGETS),
        methods=fql_methods(),
        domains={t.domain: default_settings(t.task) for t in tasks},
        seeds=SEEDS,
        methods_note=METHODS_NOTE,
    )
