"""The task's classes, which Ikomia loads from this module; they live in p3m."""
from p3m.integrations.ikomia.task import MattingParam, MattingTask, MattingTaskFactory

__all__ = ["MattingParam", "MattingTask", "MattingTaskFactory"]
