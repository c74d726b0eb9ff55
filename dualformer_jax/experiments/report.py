"""The comparison's report: a RESULTS.md-ready table and three plots from summary.json;
the sweep's: a table over points and 1-Optimal / SWC against the number of tasks.

  python -m dualformer_jax.experiments.report --workdir=DIR   # re-draws DIR/results.md, PNGs
                                                              # (DIR/sweep.md, sweep.png)

Plots: optimal rate per model and mode, reasoning (trace) length per model and
mode, and the training loss curves of the three runs (read from each run's
metrics.jsonl; the plan-token eval loss is the one loss the three formats share).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

from dualformer_jax import io_utils
from dualformer_jax.experiments import intervals
from dualformer_jax.train.logger import read_metrics

LABELS = {"solution_only": "Solution-Only", "complete_trace": "Complete-Trace",
          "dualformer": "Dualformer"}
COLORS = {"solution_only": "tab:gray", "complete_trace": "tab:blue", "dualformer": "tab:orange"}
# Anything else (the bootstrap rounds searchformer_r<k>) is drawn in tab:green.


def label(model: str) -> str:
  """Display name: LABELS, and `Searchformer r<k>` for bootstrap round k."""
  if model.startswith("searchformer_r"):
    return f"Searchformer r{model[len('searchformer_r'):]}"
  return LABELS.get(model, model)


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str) -> str:
  return "-" if x is None else format(x, fmt)


def rows(summary: dict) -> list[tuple[str, str, dict]]:
  """(model, mode, metrics) in table order."""
  return [(model, mode, m) for model, modes in summary["models"].items()
          for mode, m in modes.items()]


def markdown(summary: dict) -> str:
  """The comparison table; trace lengths also relative to Complete-Trace's and to A*'s traces."""
  ref = summary.get("reference", {}).get("complete_trace_len_mean")
  searchformer = summary["models"].get("complete_trace", {}).get("slow", {}).get("mean_trace_len")
  any_m = rows(summary)[0][2] if summary["models"] else {}
  n = any_m.get("num_samples", "n")
  lines = [f"| model | mode | 1-Solved-{n} | 1-Optimal-{n} | 3-Solved-{n} | 3-Optimal-{n} | SWC "
           "| distinct correct plans | trace tokens | trace clauses | vs Complete-Trace "
           "| vs complete A* | slow share |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

  def change(trace, base):
    return "-" if not base or not trace else f"{100 * (trace / base - 1):+.0f}%"

  for model, mode, m in rows(summary):
    trace = m["mean_trace_len"]
    lines.append(
        f"| {label(model)} | {mode} | {_pct(m['1_solved'])} | {_pct(m['1_optimal'])} "
        f"| {_pct(m['3_solved'])} | {_pct(m['3_optimal'])} | {_num(m['swc'], '.3f')} "
        f"| {_num(m['diversity'], '.2f')} | {_num(trace, '.1f')} "
        f"| {_num(m.get('mean_trace_clauses'), '.1f')} | {change(trace, searchformer)} "
        f"| {change(trace, ref)} | {_pct(m['slow_share'])} |")
  note = (f"{any_m.get('num_tasks', '?')} unseen test tasks x {any_m.get('num_samples', '?')} "
          f"responses per mode; trace tokens / clauses = mean reasoning tokens / `create` and "
          f"`close` steps per response (summaries written before clauses were counted show -); "
          f"the change columns compare tokens")
  if ref:
    note += f"; complete A* traces of these tasks average {ref:.1f} tokens"
  return "\n".join(lines) + f"\n\n{note}.\n"


def _bars(ax, summary: dict, values) -> None:
  labels, heights, colors = [], [], []
  for model, mode, m in rows(summary):
    labels.append(f"{label(model)}\n{mode}")
    heights.append(values(m))
    colors.append(COLORS.get(model, "tab:green"))
  xs = range(len(labels))
  ax.bar(xs, heights, color=colors)
  ax.set_xticks(list(xs), labels, fontsize=8)
  for x, h in zip(xs, heights):
    ax.annotate(f"{h:.1f}", (x, h), ha="center", va="bottom", fontsize=8)


def plot_optimal(summary: dict, path: str) -> None:
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100, sharey=True)
  n = rows(summary)[0][2]["num_samples"] if summary["models"] else "n"
  for ax, key, title in zip(axes, ("1_optimal", "3_optimal"), (f"1-Optimal-{n}", f"3-Optimal-{n}")):
    _bars(ax, summary, lambda m, key=key: 100 * m[key])
    ax.set_title(title)
    ax.set_ylim(0, 105)
  axes[0].set_ylabel("% of test tasks")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_reasoning_length(summary: dict, path: str) -> None:
  """Mean trace length per model and mode, in tokens and in clauses (search steps)."""
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), dpi=100)
  _bars(axes[0], summary, lambda m: m["mean_trace_len"] or 0.0)
  ref = summary.get("reference", {}).get("complete_trace_len_mean")
  if ref:
    axes[0].axhline(ref, color="k", ls="--", lw=1, label=f"complete A* trace ({ref:.0f})")
    axes[0].legend(fontsize=8)
  axes[0].set_ylabel("trace tokens per response")
  axes[0].set_title("reasoning length (tokens)")
  _bars(axes[1], summary, lambda m: m.get("mean_trace_clauses") or 0.0)
  axes[1].set_ylabel("create / close steps per response")
  axes[1].set_title("reasoning length (clauses)")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_losses(workdir: str, models: list[str], path: str) -> None:
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
  for model in models:
    metrics = read_metrics(os.path.join(workdir, model))
    color, name = COLORS.get(model, "tab:green"), label(model)
    train = [(r["step"], r["loss"]) for r in metrics if isinstance(r.get("loss"), float)]
    plan = [(r["step"], r["eval_plan_loss"]) for r in metrics
            if isinstance(r.get("eval_plan_loss"), float)]
    if train:
      axes[0].plot(*zip(*train), color=color, label=name)
    if plan:
      axes[1].plot(*zip(*plan), color=color, marker="o", ms=3, label=name)
  axes[0].set_title("training loss (all decoder tokens)")
  axes[1].set_title("test loss on plan tokens")
  for ax in axes:
    ax.set_xlabel("step")
    if ax.lines:
      ax.set_yscale("log")
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_report(workdir: str, summary: dict) -> list[str]:
  """Writes results.md, optimal.png, reasoning_length.png and loss.png; returns their paths."""
  import matplotlib
  matplotlib.use("Agg")
  paths = [os.path.join(workdir, n) for n in
           ("results.md", "optimal.png", "reasoning_length.png", "loss.png")]
  io_utils.write_text(paths[0], markdown(summary))
  plot_optimal(summary, paths[1])
  plot_reasoning_length(summary, paths[2])
  plot_losses(workdir, list(summary["models"]), paths[3])
  return paths


def sweep_markdown(sweep: dict) -> str:
  """One row per (number of tasks, model, mode), with the scored checkpoint."""
  lines = ["| tasks | model | mode | 1-Optimal | 3-Optimal | SWC | trace tokens | trace clauses "
           "| scored step |", "|---|---|---|---|---|---|---|---|---|"]
  n = "?"
  for num, point in sweep["points"].items():
    for model, mode, m in rows(point):
      n = m.get("num_samples", n)
      lines.append(
          f"| {int(num):,} | {label(model)} | {mode} | {_pct(m['1_optimal'])} "
          f"| {_pct(m['3_optimal'])} | {_num(m['swc'], '.3f')} "
          f"| {_num(m['mean_trace_len'], '.1f')} "
          f"| {_num(m.get('mean_trace_clauses'), '.1f')} "
          f"| {point.get('selected_step', {}).get(model, '-')} |")
  return "\n".join(lines) + (f"\n\nk-Optimal = k-Optimal-{n}; each model scored at its checkpoint "
                             "of lowest validation loss.\n")


def plot_sweep(sweep: dict, path: str) -> None:
  """1-Optimal and SWC against the number of training tasks, one line per model and mode."""
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
  series: dict[tuple[str, str], list[tuple[int, dict]]] = {}
  for num, point in sweep["points"].items():
    for model, mode, m in rows(point):
      series.setdefault((model, mode), []).append((int(num), m))
  styles = {"fast": "o--", "slow": "s-", "auto": "^:"}
  for ax, key, title in zip(axes, ("1_optimal", "swc"), ("1-Optimal", "SWC")):
    for (model, mode), pts in series.items():
      xs = [x for x, _ in pts]
      ys = [100 * m[key] if key == "1_optimal" else m[key] for _, m in pts]
      ax.plot(xs, ys, styles.get(mode, "o-"), color=COLORS.get(model, "tab:green"),
              label=f"{label(model)} {mode}")
    _against_tasks(ax, title)
  _save(fig, axes, path)


def _against_tasks(ax, title: str) -> None:
  """A panel of a metric against the number of training tasks (log scale)."""
  ax.set_xscale("log")
  ax.set_xlabel("training tasks")
  ax.set_title(title)
  ax.grid(alpha=0.3)


def _save(fig, axes, path: str) -> None:
  """Labels, legend, layout; writes the PNG and frees the figure."""
  import matplotlib.pyplot as plt
  axes[0].set_ylabel("% of test tasks")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _spread(x: dict, pct: bool, fmt: str = ".1f") -> str:
  """`mean ± sd [min-max]` of intervals.spread; one seed: the value alone."""
  if not x or x.get("mean") is None:
    return "-"
  k = 100 if pct else 1
  unit = "%" if pct else ""
  text = f"{k * x['mean']:{fmt}}{unit}"
  if x["n"] > 1:
    text += f" ± {k * x['std']:{fmt}} [{k * x['min']:{fmt}}-{k * x['max']:{fmt}}]"
  return text


def seeds_markdown(sweep: dict) -> str:
  """The sweep with seeds (experiments/sweep.py): a row per (tasks, model, mode) with mean ±
  sd [min-max] over seeds at the selected and the last step, and each claim's interval."""
  lines = ["| tasks | model | mode | 1-Optimal (selected) | 1-Optimal (last) | SWC (selected) "
           "| SWC (last) | trace tokens, all | trace tokens, correct | trace clauses, correct "
           "| selected steps / last |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for num, point in sweep["points"].items():
    for model, modes in point["models"].items():
      for mode, m in modes.items():
        sel, last = m["selected"], m["last"]
        steps = ", ".join(str(s) for s in point["selected_step"][model][mode])
        lines.append(
            f"| {int(num):,} | {label(model)} | {mode} | {_spread(sel['1_optimal'], True)} "
            f"| {_spread(last['1_optimal'], True)} | {_spread(sel['swc'], False, '.3f')} "
            f"| {_spread(last['swc'], False, '.3f')} "
            f"| {_spread(sel['mean_trace_len'], False)} "
            f"| {_spread(sel['mean_trace_len_correct'], False)} "
            f"| {_spread(sel['mean_trace_clauses_correct'], False)} "
            f"| {steps} / {point['last_step'][model]} |")
  lines += ["", "| tasks | claim | scored at | metric | difference | 95% interval "
            "| excludes 0 |", "|---|---|---|---|---|---|---|"]
  for num, point in sweep["points"].items():
    for which, claims in point["intervals"].items():
      for c in claims:
        k = 100 if c["metric"] == "1_optimal" else 1
        unit, fmt = ("", ".3f") if k == 1 else (" pts", ".1f")
        lines.append(
            f"| {int(num):,} | {label(c['model'])} {c['mode']} - {label(c['baseline'])} "
            f"{c['baseline_mode']} | {which} step | {c['metric']} "
            f"| {k * c['diff']:+{fmt}}{unit} | [{k * c['low']:+{fmt}}, {k * c['high']:+{fmt}}] "
            f"| {'yes' if c['excludes_zero'] else 'no'} |")
  return "\n".join(lines) + (
      f"\n\nMean ± standard deviation [min-max] over {sweep.get('seeds', '?')} seeds; "
      f"1-Optimal counts a test task solved when any of its sampled responses is optimal. "
      f"Selection: {sweep.get('selection', '?')}; every model is also scored at its last "
      f"step. Intervals: percentile bootstrap of the difference, resampling test tasks and "
      f"seeds together (paired), {intervals.RESAMPLES} draws, fixed generator seed; "
      f"'excludes 0' means the claim holds at 95%.\n")


def plot_seeds(sweep: dict, path: str) -> None:
  """1-Optimal and SWC at the selected step against the number of training tasks: the mean
  over seeds, bars from min to max."""
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
  series: dict[tuple[str, str], list[tuple[int, dict]]] = {}
  for num, point in sweep["points"].items():
    for model, modes in point["models"].items():
      for mode, m in modes.items():
        series.setdefault((model, mode), []).append((int(num), m["selected"]))
  styles = {"fast": "o--", "slow": "s-", "auto": "^:"}
  for ax, key, title in zip(axes, ("1_optimal", "swc"), ("1-Optimal", "SWC")):
    k = 100 if key == "1_optimal" else 1
    for (model, mode), pts in series.items():
      xs = [x for x, _ in pts]
      mean = np.array([k * m[key]["mean"] for _, m in pts])
      err = np.maximum(0.0, np.array(  # [2, points]; rounding can put the mean past a bound
          [[k * (m[key]["mean"] - m[key]["min"]), k * (m[key]["max"] - m[key]["mean"])]
           for _, m in pts]).T)
      ax.errorbar(xs, mean, yerr=err, fmt=styles.get(mode, "o-"), capsize=3,
                  color=COLORS.get(model, "tab:green"), label=f"{label(model)} {mode}")
    _against_tasks(ax, f"{title} at the selected step (mean, min-max over seeds)")
  _save(fig, axes, path)


def write_sweep_report(workdir: str, sweep: dict) -> list[str]:
  """Writes sweep.md and sweep.png; returns their paths. A sweep.json with seeds (the
  current format) gets the tables with spreads and intervals; an older one its one row per
  model and mode."""
  import matplotlib
  matplotlib.use("Agg")
  paths = [os.path.join(workdir, "sweep.md"), os.path.join(workdir, "sweep.png")]
  with_seeds = "seeds" in sweep
  io_utils.write_text(paths[0], (seeds_markdown if with_seeds else sweep_markdown)(sweep))
  (plot_seeds if with_seeds else plot_sweep)(sweep, paths[1])
  return paths


def define_flags() -> None:
  """--workdir (the sweep's). Called under __main__ only, as in compare.py and show_data.py."""
  flags.DEFINE_string("workdir", None, "the sweep's workdir (holds summary.json)")
  flags.mark_flags_as_required(["workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = flags.FLAGS.workdir
  sweep_file = os.path.join(workdir, "sweep.json")
  try:
    if os.path.exists(sweep_file):
      paths = write_sweep_report(workdir, io_utils.read_json(sweep_file, "sweep summary"))
    else:
      paths = write_report(workdir, io_utils.read_json(os.path.join(workdir, "summary.json"),
                                                       "summary"))
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print("\n".join(paths))


if __name__ == "__main__":
  define_flags()
  app.run(main)
