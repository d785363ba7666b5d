"""Task sources: the one place that knows where a task's dataset and environment come from.

Every module `<name>_source.py` of this package is a source: it defines `SOURCE`, an object of the
TaskSource protocol (harness/run/sources/base.py). `source_for(task)` asks them in name order
whether they own the task, OGBench last: it owns every other name, so a name no source knows gets
OGBench's message. A new source (Robomimic, say) is one new module here. No torch here: evaluation
worker processes import it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from harness.run.sources.base import TaskSource

__all__ = ["FALLBACK", "TaskSource", "source_for", "sources"]

FALLBACK = "ogbench_source"


@functools.cache
def sources() -> tuple[TaskSource, ...]:
    """Every source, the fallback last."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_source"))
    names.remove(FALLBACK)
    return tuple(importlib.import_module(f"{__name__}.{name}").SOURCE for name in [*names, FALLBACK])


def source_for(task: str) -> TaskSource:
    """The source of `task` (OGBench for any name no other source owns)."""
    return next(source for source in sources() if source.owns(task))
