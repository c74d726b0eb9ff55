"""A* + tokenization throughput on one core: given 10x10 mazes and 7x7 two-box Sokoban levels.

  python benchmarks/astar_bench.py [--mazes=2000] [--levels=100]
Tasks are drawn first (not timed), then solved with deterministic A* and
tokenized. Last line: {"maze_per_s": ..., "sokoban_per_s": ...}.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import maze as maze_configs  # noqa: E402
from configs import sokoban as sokoban_configs  # noqa: E402
from dualformer_jax.tasks import make_task  # noqa: E402
from dualformer_jax.tasks.base import Unsolvable  # noqa: E402


def draw(task, count: int, seed: int) -> list:
  """Solvable tasks (sample_group may return levels A* then rejects)."""
  rng, specs = np.random.default_rng(seed), []
  while len(specs) < count:
    for spec in task.sample_group(rng):
      try:
        task.solve_tokens(spec, None)
      except Unsolvable:
        continue
      specs.append(spec)
  return specs[:count]


def per_second(task, specs, repeats: int = 3) -> float:
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    for spec in specs:
      task.solve_tokens(spec, None)
    best = min(best, time.perf_counter() - t0)
  return len(specs) / best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--mazes", type=int, default=2000)
  parser.add_argument("--levels", type=int, default=100)
  args = parser.parse_args()
  maze_cfg = maze_configs.get_config("default")
  maze_cfg.task.size = 10
  sokoban_cfg = sokoban_configs.get_config("paper")  # 7x7, two boxes, two docks
  maze = make_task(maze_cfg.task)
  sokoban = make_task(sokoban_cfg.task)
  mazes = draw(maze, args.mazes, 0)
  levels = draw(sokoban, args.levels, 0)
  out = {"maze_per_s": round(per_second(maze, mazes), 1),
         "sokoban_per_s": round(per_second(sokoban, levels), 2),
         "num_mazes": len(mazes), "num_levels": len(levels)}
  print(f"10x10 mazes: {out['maze_per_s']}/s, 7x7 two-box Sokoban: {out['sokoban_per_s']}/s")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
