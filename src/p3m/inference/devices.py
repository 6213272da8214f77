"""The project's one rule for choosing a torch device."""
from __future__ import annotations


def resolve_device(device="auto"):
    """``auto`` picks CUDA when present, else the CPU; ``mps`` must be asked for explicitly.

    Returns a ``torch.device``; an unknown or unavailable device is a ValueError.
    """
    import torch

    if str(device) != "auto":
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        if resolved.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available")
        return resolved
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
