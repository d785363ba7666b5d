"""The `smoke` suite: three tasks whose data `flowarena datagen` makes here, tiny budgets and networks.

Same per-domain settings and hyperparameters as `ogbench`; TINY shrinks every method (the harness
applies only the keys a method's Config has).
"""

from __future__ import annotations

from suites import Suite, make_tasks
from suites.ogbench import domain_settings, paper_methods

TINY = {"hidden_dims": (64, 64), "num_critics": 2, "batch_size": 32}
SMOKE_TASKS = (
    "cube-double-play-singletask-task1-v0",
    "puzzle-3x3-play-singletask-task1-v0",
    "scene-play-singletask-task1-v0",
)
SMOKE_BUDGETS = {"offline_steps": 200, "online_steps": 0, "eval_interval": 100, "eval_episodes": 2}


def smoke_suite() -> Suite:
    domains = domain_settings()
    return Suite(
        name="smoke",
        description="3 tasks with locally generated data, tiny networks and budgets (minutes on a CPU)",
        tasks=make_tasks(list(SMOKE_TASKS), domains),
        budgets=dict(SMOKE_BUDGETS),
        config_overrides=dict(TINY),
        methods=paper_methods(),
        domains=domains,
        seeds=2,
    )
