"""Task sources: the one place that knows where a task's dataset and environment come from.

`source_for(task)` is the first source in SOURCES that owns the task; OGBench comes last and owns
every other name, so a name no source knows gets OGBench's message. A new source (Robomimic, say)
is one module with a `SOURCE` object of the TaskSource protocol (harness/run/sources/base.py),
named in SOURCES before OGBench. No torch here: evaluation worker processes import it.
"""

from __future__ import annotations

import importlib

from harness.run.sources.base import TaskSource

__all__ = ["SOURCES", "TaskSource", "source_for"]

SOURCES = ("harness.run.sources.minari_source", "harness.run.sources.ogbench_source")


def source_for(task: str) -> TaskSource:
    """The source of `task` (OGBench for any name no other source owns)."""
    for module in SOURCES:
        source = importlib.import_module(module).SOURCE
        if source.owns(task):
            return source
    raise AssertionError("the last source owns every task")
