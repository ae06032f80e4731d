"""Which torch device a command may use (the -device flag checked against what this machine has), and the
precision the networks run in there (`autocast_for`, from the plans' dtype).

The planner sizes activations for the plans' `dtype`; `autocast_for` is the one place that turns it into what the
networks run in:

| device | plans dtype | networks run in |
|---|---|---|
| cuda | bfloat16 / float16 | autocast to that dtype |
| cpu, mps | bfloat16 / float16 | float32 (autocast only when forced: on a CPU, bf16 autocast made a |
| | | paper-width expert 8x slower) |
| any | float32 | float32 |

Only network forward passes run under it: the operators, the consistency projection, CG / FFT and the
adaptation's data consistency stay in float32 (their callers leave the context before them).
"""
from __future__ import annotations

import contextlib

import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(device, error: type[Exception] = ValueError) -> torch.device:
    """torch.device of `device`; `error` (the command's own error type) with the fix when this machine lacks it."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error("-device cuda: no CUDA device is available to torch here. Fix: -device cpu, or install a CUDA "
                    "build of torch.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise error("-device mps: MPS is not available on this machine. Fix: -device cpu.")
    if device.type not in DEVICE_TYPES:
        raise error(f"-device {device}: use cpu, cuda or mps.")
    return device


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(plans_dtype: str | None, device, *, force: bool = False) -> torch.dtype | None:
    """The dtype networks autocast to for the plans' `dtype` on `device` (module docstring's table); None: float32."""
    if plans_dtype in (None, "float32"):
        return None
    if plans_dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"plans dtype {plans_dtype!r}: use float32, bfloat16 or float16.")
    device = torch.device(device)
    return AUTOCAST_DTYPES[plans_dtype] if device.type == "cuda" or force else None


def autocast_for(plans_dtype: str | None, device, *, force: bool = False):
    """A fresh context manager that runs network forwards in the planned precision on `device` (or does nothing)."""
    dtype = autocast_dtype(plans_dtype, device, force=force)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
