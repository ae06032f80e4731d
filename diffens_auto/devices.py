"""Which torch device a command may use: the -device flag checked against what this machine has."""
from __future__ import annotations

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
