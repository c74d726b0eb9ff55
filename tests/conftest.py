"""Test setup: 8 simulated CPU devices, absl flags parsed (grain workers read them), and
one persistent XLA cache for the session: many tests compile the same tiny programs
(fresh each session, so no state survives a run)."""

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The suite runs on those CPU devices; with libtpu installed (CI installs it for the
# deviceless TPU compile test) every process would otherwise probe for a TPU first.
# JAX_PLATFORMS=cuda,cpu python -m pytest adds a GPU (the cuDNN tests).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Before jax is imported; inherited by the tests' subprocesses (CLI, 2-process runs).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dualformer_xla_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
