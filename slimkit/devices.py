"""Where the engine computes: one resolver for the API, the CLI and the estimator."""

from __future__ import annotations

import torch

from slimkit.errors import InvalidArgument


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` is CUDA when available, else CPU; an unknown or unavailable device is a clear error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InvalidArgument(f"unknown device {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("device cuda requested but no CUDA device is available")
    return device
