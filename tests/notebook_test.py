"""notebooks/dualformer_walkthrough.ipynb runs end to end on today's API.

The notebook is executed cell by cell in a fresh kernel (nbclient), with its
parameter cell (tagged "parameters") followed by a tiny setting: a few training
steps, two test mazes. An API change that breaks any cell fails here.
"""

import ast
import json
import os

import nbformat
from nbclient import NotebookClient

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOTEBOOK = os.path.join(_ROOT, "notebooks", "dualformer_walkthrough.ipynb")
_TINY = dict(NUM_TRAIN=64, NUM_TEST=16, NUM_STEPS=4, EVAL_TASKS=2, EVAL_SAMPLES=2, NUM_BUCKETS=1)
_MODES = ("fast", "slow", "auto")
# Appended to the notebook: what it produced, read back from its own variables.
_REPORT = """
print("REPORT " + json.dumps({
    "step": result.step, "train_rows": len(train_rows), "results": results,
    "table": open(os.path.join(eval_dir, "table.md")).read(),
    "pictures": sorted(os.listdir(eval_dir)),
    "greedy": {m: [v.correct, v.trace_len] for m, v in greedy.items()},
    "levels": sorted(set(levels)), "cwd": os.getcwd()}))
"""


def _parameter_cell(nb) -> int:
  found = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(found) == 1, f"want one cell tagged 'parameters', found {len(found)}"
  return found[0]


def _assigned(source: str) -> set[str]:
  return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
          for t in node.targets if isinstance(t, ast.Name)}


def _outputs(nb, kind: str) -> list:
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if kind in o.get("data", {})]


def test_parameter_cell_names_every_override():
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  names = _assigned(nb.cells[_parameter_cell(nb)].source)
  assert set(_TINY) | {"WORKDIR"} <= names, f"the parameter cell lacks {set(_TINY) - names}"


def test_install_cell_installs_only_in_colab():
  """Shell and magic lines (git clone, pip install) run only under `if IN_COLAB:`."""
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  cells = [c.source for c in nb.cells if c.cell_type == "code" and "IN_COLAB" in c.source]
  assert len(cells) == 1
  lines = cells[0].splitlines()
  assert 'IN_COLAB = importlib.util.find_spec("google.colab") is not None' in lines
  start, end = lines.index("if IN_COLAB:"), lines.index("else:")
  magics = [i for i, ln in enumerate(lines) if ln.strip()[:1] in ("!", "%")]
  assert magics and all(start < i < end for i in magics), magics
  assert any("pip install -q -r requirements.txt" in lines[i] for i in magics)
  assert all("jax[" not in ln for ln in lines[end:])


def test_saved_notebook_holds_a_real_run():
  """The committed copy keeps the outputs of a run at its default parameters."""
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  steps = ast.literal_eval(
      [ln for ln in nb.cells[_parameter_cell(nb)].source.splitlines()
       if ln.startswith("NUM_STEPS")][0].split("=")[1].split("#")[0].strip())
  assert f"trained to step {steps} in" in text
  assert all(f"{mode}:" in text for mode in _MODES)
  assert len(_outputs(nb, "image/png")) >= 6  # 2 trace pictures, the loss, 3 answers


def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  overrides = dict(_TINY, WORKDIR=str(tmp_path / "run"))
  nb.cells.insert(_parameter_cell(nb) + 1, nbformat.v4.new_code_cell(
      "\n".join(f"{k} = {v!r}" for k, v in overrides.items())))
  nb.cells.append(nbformat.v4.new_code_cell(_REPORT))
  for cell in nb.cells:  # the saved run's outputs must not count
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  # The notebook's own CPU device count (configure_jax), not the suite's 8 devices.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(_NOTEBOOK)}}).execute()

  lines = [ln for o in nb.cells[-1].outputs for ln in o.get("text", "").splitlines()
           if ln.startswith("REPORT ")]
  assert len(lines) == 1, nb.cells[-1].outputs
  report = json.loads(lines[0][len("REPORT "):])
  # The install cell found the checkout (outside Colab it installs nothing).
  assert os.path.realpath(report["cwd"]) == os.path.realpath(_ROOT)
  assert report["step"] == _TINY["NUM_STEPS"]
  assert report["train_rows"] >= 1
  assert set(report["levels"]) <= set(range(5)) and report["levels"]
  assert sorted(report["results"]) == sorted(_MODES)
  for mode, m in report["results"].items():
    assert m["num_tasks"] == _TINY["EVAL_TASKS"], mode
    assert 0.0 <= m["1_optimal"] <= m["1_solved"] <= 1.0, (mode, m)
    assert 0.0 <= m["malformed_share"] <= 1.0, (mode, m)
    assert f"{mode}_0.png" in report["pictures"]
  assert "| fast" in report["table"] and "| auto" in report["table"], report["table"]
  assert sorted(report["greedy"]) == sorted(_MODES)
  # Two trace pictures, the loss curve, one answer per mode; the table as markdown.
  assert len(_outputs(nb, "image/png")) >= 6
  assert _outputs(nb, "text/markdown")
