"""`--precision fp32|tf32|bf16`: the precision of a run's matrix products (algorithms/precision.py).

Precision is part of what a run computes, so it is part of its identity: a run in another precision
than float32 is its own variant, `fql@bf16` or `qam[inv_temp=3]@bf16` (its own directory, and its own
cell in every leaderboard, comparison and report), spec.json and every evals and train row say it,
and a run directory never resumes in another precision. Records from before the setting are fp32.
"""

from __future__ import annotations

import argparse
from typing import Any

from algorithms import precision as precisions
from harness.errors import UserError

SUFFIX = "@"


def add_precision_flag(parser: argparse.ArgumentParser, default: str | None = precisions.DEFAULT) -> None:
    """`--precision`; a sweep passes default None, so that its TOML spec's `precision` can apply."""
    parser.add_argument(
        "--precision",
        default=default,
        choices=precisions.PRECISIONS,
        help="precision of the matrix products: fp32 (default), tf32 (TF32 on CUDA; float32 on a CPU) "
        "or bf16 (bfloat16 products with float32 accumulation, where the device has bfloat16 units); "
        "part of a run's identity: other than fp32, the variant is named METHOD@PRECISION",
    )


def check_name(precision: Any) -> str:
    try:
        return precisions.check_name(precision)
    except precisions.UnsupportedPrecision as error:
        raise UserError(str(error)) from None


def check_device(precision: str, device: Any) -> None:
    """UserError (exit 2) when `device` (a torch.device) cannot compute `precision`."""
    try:
        precisions.check_supported(precision, device)
    except precisions.UnsupportedPrecision as error:
        raise UserError(str(error)) from None


def check_here(precision: str, device: Any) -> str | None:
    """UserError (exit 2) when `device` (the torch.device `--device` picks here) cannot compute
    `precision`; else what it computes, in words, when that is not plain float32 (to say once)."""
    check_device(precision, device)
    return None if precision == precisions.DEFAULT else f"precision {precisions.describe(precision, device)}"


def apply(agent: Any, precision: str) -> None:
    """Let `agent` compute in `precision`; UserError (exit 2) where its device cannot."""
    check_device(precision, agent.device)
    precisions.use_precision(agent, precision)


def with_precision(variant: str, precision: str) -> str:
    """`fql` -> `fql@bf16`; fp32 variants keep their name (and the records made before precision
    existed keep theirs)."""
    return variant if precision == precisions.DEFAULT else f"{variant}{SUFFIX}{precision}"


def recorded_precision(record: dict[str, Any]) -> str:
    """A spec.json's precision: fp32 for one written before the setting existed."""
    return str(record.get("precision") or precisions.DEFAULT)
