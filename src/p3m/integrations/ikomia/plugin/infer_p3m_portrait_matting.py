"""Ikomia's entry point for this plugin; the task lives in p3m (``p3m.integrations.ikomia.task``)."""
from p3m.integrations.ikomia.task import IkomiaPlugin

__all__ = ["IkomiaPlugin"]
