"""The planning tasks (maze, Sokoban) and the registry that builds one from `config.task`.

TASKS is the one list of task names: config validation, the trace CLI and the
renderer read it.
"""

from __future__ import annotations

from dualformer_jax.tasks.base import Task
from dualformer_jax.tasks.maze import MazeTask
from dualformer_jax.tasks.sokoban import SokobanTask

TASKS = {MazeTask.name: MazeTask, SokobanTask.name: SokobanTask}


def make_task(task_cfg) -> Task:
  """The task named by `task_cfg.name`, built from the rest of it (a config.TaskConfig, or
  `config.task` itself)."""
  cls = TASKS.get(task_cfg.name)
  if cls is None:
    raise ValueError(f"config.task.name={task_cfg.name!r}: expected one of {sorted(TASKS)}")
  return cls.from_config(task_cfg)
