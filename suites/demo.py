"""The `demo` suite: what `flowarena demo` runs, learning curves of QAM and FQL in under ten minutes
of training on a 2-core CPU.

One task, cube-single task1 (pick the cube up and move it 20 cm), on 50 episodes of 1000 steps of
play data that `flowarena datagen` makes here (DEMO_DATA), with cube-double's settings (action
chunks of 5, discount 0.99, dense rewards, rho 0.5) and cube-double's per-method hyperparameters
from the QAM paper's table (QAM inv_temp 1, FQL alpha 300, ...). Much smaller than the paper's
runs, to fit the minutes: 2 x 256 networks, 2 critics, batch 128, 5 flow steps, 15,000 updates
with the compiled update, 20 evaluation episodes every 3,000 (the README's "The demo" has what was
measured). The same sweep by hand:

    flowarena datagen --env cube-single-v0 --episodes 50 --episode-length 1000 --workers 2 --out data/demo
    flowarena sweep --suite demo --methods qam,fql --jobs 2 --dataset-dir data/demo --name demo --compile on
"""

from __future__ import annotations

from suites import Suite, make_tasks
from suites.ogbench import DOMAINS, paper_methods

DEMO_TASK = "cube-single-play-singletask-task1-v0"
DEMO_DOMAIN = "cube-single-play"
DEMO_METHODS = ("qam", "fql")
# The dataset the demo generates: `flowarena datagen --env cube-single-v0` with these arguments.
DEMO_DATA = {"env": "cube-single-v0", "episodes": 50, "episode_length": 1000, "workers": 2, "val_episodes": 1}
DEMO_CONFIG = {"hidden_dims": (256, 256), "num_critics": 2, "batch_size": 128, "flow_steps": 5}
DEMO_BUDGETS = {"offline_steps": 15000, "online_steps": 0, "eval_interval": 3000, "eval_episodes": 20}
# The compiled update (algorithms/compiled.py): about 1.4x the eager one at this size, which is
# what lets both methods learn within the demo's minutes.
DEMO_COMPILE = "on"


def demo_suite() -> Suite:
    domains = {DEMO_DOMAIN: {**DOMAINS["cube-double-play"], "dataset": f"{DEMO_DOMAIN}-v0"}}
    methods = {DEMO_DOMAIN: paper_methods(["cube-double-play"])["cube-double-play"]}
    return Suite(
        name="demo",
        description="cube-single task1 on generated play data, small networks: `flowarena demo`",
        tasks=make_tasks([DEMO_TASK], domains),
        budgets=dict(DEMO_BUDGETS),
        config_overrides=dict(DEMO_CONFIG),
        methods=methods,
        domains=domains,
        seeds=1,
    )
