"""benchmarks/: every script runs at a tiny size (a subprocess, as from a shell) and prints
its figures as one JSON object on its last line, so an API change that breaks one fails
here. Nothing is timed: the figures of a tiny run mean nothing."""

import json
import os
import subprocess
import sys
from typing import NamedTuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "benchmarks")


class Case(NamedTuple):
  flags: list[str]  # the tiny size
  keys: set[str]  # its JSON line has these
  values: dict  # and reports these as given
  rows: int | None = None  # len(json["rows"]): one per length (x implementation) or device count


CASES = {
    "astar_bench": Case(
        ["--mazes=4", "--levels=2"],
        {"maze_per_s", "sokoban_per_s"},
        {"num_mazes": 4, "num_levels": 2}),
    "attention_bench": Case(
        ["--lens=32", "--impls=xla,blockwise", "--heads=1", "--head_dim=8", "--repeats=1"],
        {"backend", "rows"},
        {"batch": 1, "heads": 1, "head_dim": 8}, rows=2),
    "lm_memory_bench": Case(
        ["--model=tiny", "--devices=2", "--fsdp=2", "--seq_len=16"],
        {"rows", "compute_dtype", "param_dtype"},
        {"model": "tiny", "seq_len": 16, "per_device_batch": 1}, rows=1),
    "memory_bench": Case(
        [f"--config={os.path.join(REPO, 'configs', 'maze.py')}", "--config.model.layers=1",
         "--config.model.dim=32", "--config.model.ffn=64", "--config.data.max_prompt_len=16",
         "--config.data.max_decoder_len=32", "--dec_lens=32", "--per_device_batch=1",
         "--samples=2"],
        {"rows", "sampler", "mesh", "model", "attention"},
        {"prompt_len": 16, "devices": 1}, rows=1),
    "pipeline_bench": Case(
        ["--num_train=32", "--batches=2", "--workers=", "--gen_workers=1"],
        {"examples_per_s_in_process", "padding_efficiency", "padding_efficiency_no_buckets",
         "padding_efficiency_pad_to_config_max", "num_shapes", "shapes_seen"},
        {}),
    "sample_bench": Case(
        ["--size=tiny", "--dim=32", "--ffn=64", "--layers=1", "--prompt_len=8", "--samples=4",
         "--new_tokens=8", "--repeats=1", "--prompts=1,2", "--cpu_devices=2"],
        {"tokens_per_s", "tokens_per_s_2x4", "vocab_size"},
        {"devices": 2, "top_k": 0}),
    "train_bench": Case(
        ["--variants=fp32", "--size=tiny", "--dim=32", "--ffn=64", "--layers=1", "--batch=2",
         "--enc_len=8", "--dec_len=16", "--vocab_size=32", "--steps=1"],
        {"decoder_tokens_per_s", "mfu", "gflop_per_step", "peak_gflops", "variants"},
        {"best_variant": "fp32", "size": "tiny", "batch": 2, "dec_len": 16}),
}


def _env() -> dict:
  """This environment without conftest's simulated device count (each script sets its own),
  and with XLA's backend optimisation off: ~40% less compile time, and no figure is checked."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join([*flags, "--xla_backend_optimization_level=0"])
  return env


def test_every_script_has_a_case():
  scripts = {f[:-3] for f in os.listdir(BENCHMARKS) if f.endswith(".py") and f != "__init__.py"}
  assert scripts == set(CASES)


@pytest.mark.parametrize("script", sorted(CASES))
def test_runs_tiny_and_ends_with_one_json_object(script, tmp_path):
  case = CASES[script]
  proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, f"{script}.py"), *case.flags],
                        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
  lines = proc.stdout.strip().splitlines()
  assert lines, f"{script} printed nothing"
  out = json.loads(lines[-1])
  assert isinstance(out, dict), lines[-1]
  assert case.keys <= set(out), f"{script}: missing {sorted(case.keys - set(out))} in {lines[-1]}"
  assert {k: out.get(k) for k in case.values} == case.values
  if case.rows is not None:
    assert len(out["rows"]) == case.rows, out["rows"]
