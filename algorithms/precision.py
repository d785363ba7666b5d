"""Precision of an agent's matrix products: `fp32` (full float32, the default), `tf32` (TF32
products on CUDA) and `bf16` (products in bfloat16 with float32 accumulation).

In every mode the parameters, gradients, optimizer state, network outputs and losses stay float32:
`bf16` runs an update's loss and an agent's acting under `torch.autocast` (`products`: products, and
the activations between them, in bfloat16; networks cast their outputs back to float32, nets.MLP),
and the backward pass follows the forward pass's dtypes. `tf32` sets CUDA's float32 product
precision around the agent's update and acting (`device_settings`); on a CPU it computes float32
products, which `describe` says.

`bf16` needs bfloat16 units: a CUDA device that supports bfloat16, or a CPU with AVX512-BF16 or AMX.
Elsewhere autocast would still run, on slow emulated kernels, so `check_supported` refuses it;
`allow_emulated=True` (tests only) runs the mathematics anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported where used: the `flowarena` command line reads these names without loading it.
PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT = "fp32"
AUTOCAST_DTYPES = {"bf16": "bfloat16"}
# How far a compiled update's gradients may stray from the eager ones (algorithms/compiled.py), as a
# share of a parameter's largest gradient. In bf16 the compiler keeps some intermediates in float32
# where eager rounds them to bfloat16: measured 0.005-0.039 over six methods at the medium config and
# 0.087 for FAWAC at the paper's size (a LayerNorm bias with small gradients; docs/precision.md), so
# bf16's check catches gross compiler faults only.
COMPILED_TOLERANCE = {"fp32": 1e-3, "tf32": 1e-3, "bf16": 0.25}


class UnsupportedPrecision(ValueError):
    """The precision is unknown, or the device lacks the units it needs."""


def check_name(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UnsupportedPrecision(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def bf16_units(device: torch.device) -> str | None:
    """The bfloat16 units `device` has ("AMX", "AVX512-BF16", the CUDA device's name), or None."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        if _cpu_flag("_is_amx_tile_supported"):
            return "AMX"
        if _cpu_flag("_is_avx512_bf16_supported"):
            return "AVX512-BF16"
    return None


def _cpu_flag(name: str) -> bool:
    import torch

    check = getattr(torch.cpu, name, None)  # x86 builds only
    return bool(check()) if check is not None else False


def check_supported(precision: str, device: torch.device) -> None:
    """Raises UnsupportedPrecision when `device` cannot compute `precision` at full speed."""
    check_name(precision)
    if precision == "bf16" and bf16_units(device) is None:
        where = "this CPU has neither AVX512-BF16 nor AMX" if device.type == "cpu" else f"{device} has none"
        raise UnsupportedPrecision(
            f"--precision bf16 needs bfloat16 units and {where} (see `lscpu` flags avx512_bf16, "
            "amx_tile); use --precision fp32 here"
        )


def describe(precision: str, device: torch.device) -> str:
    """What `precision` computes on `device`, in words (said once per process that runs it)."""
    if precision == "bf16":
        return f"bf16: products in bfloat16 with float32 accumulation on {bf16_units(device) or 'emulated units'}"
    if precision == "tf32" and device.type != "cuda":
        return "tf32 is a CUDA mode: on this CPU the products stay float32 (the same numbers as fp32)"
    if precision == "tf32":
        return "tf32: float32 products on TF32 tensor cores"
    return "fp32: float32 products"


@contextlib.contextmanager
def device_settings(precision: str, device: torch.device) -> Iterator[None]:
    """CUDA's float32 product precision for the scope (TF32 in `tf32`, IEEE float32 otherwise),
    restored after it, so that agents of several precisions can share a process; nothing on a CPU.
    Entered outside a compiled graph (Agent.update), which Inductor compiles under it."""
    if device.type != "cuda":
        yield
        return
    import torch

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    mode = "tf32" if precision == "tf32" else "ieee"
    matmul.fp32_precision = conv.fp32_precision = mode
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


@contextlib.contextmanager
def products(precision: str, device: torch.device) -> Iterator[None]:
    """The scope in which an agent computes: autocast to bfloat16 in `bf16`, nothing otherwise."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        yield
        return
    import torch

    with torch.autocast(device.type, dtype=getattr(torch, dtype)):
        yield


def use_precision(agent: Any, precision: str, *, allow_emulated: bool = False) -> None:
    """Let every later update and act of `agent` compute in `precision`; raises UnsupportedPrecision
    where the device lacks the units (unless `allow_emulated`, for tests)."""
    if allow_emulated:
        check_name(precision)
    else:
        check_supported(precision, agent.device)
    agent.precision = precision
