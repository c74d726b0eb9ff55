"""The planning tasks (maze, Sokoban) and the registry that builds one from `config.task`."""

from __future__ import annotations

from dualformer_jax.tasks.base import Task
from dualformer_jax.tasks.maze import MazeTask
from dualformer_jax.tasks.sokoban import SokobanTask

TASKS = {MazeTask.name: MazeTask, SokobanTask.name: SokobanTask}


def make_task(task_cfg) -> Task:
  """The task named by `config.task.name`, built from the rest of `config.task`."""
  cls = TASKS.get(task_cfg.name)
  if cls is None:
    raise ValueError(f"config.task.name={task_cfg.name!r}: expected one of {sorted(TASKS)}")
  return cls.from_config(task_cfg)
