"""Which methods the tests that cover every method run over: the registry's built-in names."""

from __future__ import annotations

from algorithms import registry


def builtin_methods() -> list[str]:
    """Every name (presets included) registered by a module of the `algorithms` package, sorted;
    plug-ins registered by other tests are left out, so the list does not depend on test order."""
    return [name for name in registry.names() if registry.get(name).cls.__module__.startswith("algorithms.")]
