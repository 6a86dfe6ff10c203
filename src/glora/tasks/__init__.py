"""Kinds of fine-tuning task behind one seam (:mod:`.base`): sequence classification
(:mod:`.classification`) and causal-LM instruction tuning (:mod:`.causal_lm`)."""

from .base import Task, TaskData, get_task, register_task, task_for

# Importing a task module registers it.
from . import causal_lm, classification  # noqa: E402,F401  (isort: skip)

__all__ = ["Task", "TaskData", "get_task", "register_task", "task_for"]
