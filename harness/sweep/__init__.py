"""Many runs: a sweep (methods x variants x tasks x seeds) planned, launched, followed, collected.

    flowarena sweep [SPEC.toml] --name NAME --methods qam,fbrac --suite ogbench --seeds 12 \\
        --set qam.inv_temp=3 --grid qam.inv_temp=0.3,1,3,10 [--executor slurm --runs-per-gpu 4 ...]
    flowarena status results/NAME
    flowarena collect results/NAME

A sweep spec (a TOML file, flags, or both: flags win) names methods, tasks and seeds, per-method
overrides (`--set METHOD.KEY=VALUE`; without `METHOD.` every method), grids (`--grid METHOD.KEY=V1,V2`,
one variant per value; several grids of a method form their cross product), budgets (default: the
suite's) and executor options. Every run is a `harness.run.spec.RunSpec`; its variant name and directory
come from `harness.run.spec.resolve`, e.g. `<out>/<sweep>/qam[inv_temp=3]/<task>/seed0`.

A run's state is read from its status.json only. Running a sweep again submits only the runs that
are not done or diverged (failed, lost and preempted runs resume from their checkpoint).
`<out>/<sweep>/sweep.json` holds the plan: the spec, the executor options, "runs" (method, variant,
task, seed, run_dir relative to the sweep directory; runs planned by earlier invocations are kept)
and "jobs" (the Slurm job ids of the last submission).

Modules: options.py (ExecutorOptions), spec.py (SweepSpec, presets), toml_spec.py (the TOML spec
format), cli.py (the flags and the `sweep`, `status`, `collect` commands), plan.py (runs,
dry-run description, sweep.json), launch.py (submitting and following: local and Slurm
launchers), job.py (a job's process and each run's child process), status.py, collect.py and
files.py (the names of a sweep's files). This package uses harness.run (imported inside
functions where it loads torch: importing any module here never imports torch) and never
harness.cli (docs/architecture.md).
"""
