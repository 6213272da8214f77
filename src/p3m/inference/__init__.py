"""Inference: the official HYBRID/RESIZE strategies behind one ``Matter`` API."""
from p3m.inference.devices import resolve_device
from p3m.inference.matter import Matter, MatteResult
from p3m.inference.pipeline import Method

__all__ = ["Matter", "MatteResult", "Method", "resolve_device"]
