"""One run: (method, task, seed, config) -> records, or several seeds of one run stacked.

spec.py (what a run is: RunSpec, Budget, resolve, identity) -> train.py (run, run_group) ->
trainer.py (the loop; online_phase.py and checkpoint.py are its halves, members.py its seeds) ->
data.py, shards.py, envs.py, evaluate.py, grid.py, online.py (the pieces the loop uses) and records.py
(the run directory), whose rows trackers.py also sends to TensorBoard / W&B (--logger).
reevaluate.py evaluates a saved checkpoint again; stop.py is the stop
request. Nothing here imports harness.sweep or harness.cli (docs/architecture.md).
"""
