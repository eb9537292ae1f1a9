"""Runs before any test module imports JAX: simulate 8 CPU devices for the sharding tests."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Tests compile the same small programs many times (every train() of the smoke model): share
# XLA's persistent compilation cache across the session.
# The process that makes the cache (pytest-xdist's workers inherit it) removes it at exit.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rmc_jax_xla_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

# The modules holding the longest tests (whole training runs: a train step compiled, CLI runs,
# several processes) run first. pytest-xdist's work stealing takes tests from the end of a
# worker's queue, so both workers then end on short tests instead of one finishing a
# minute-long test alone (about 20 s of a 10-minute run on two cores). Only the order changes.
RUN_FIRST = ("test_multiprocess.py", "test_b16.py", "test_train.py", "test_bad_data_cli.py",
             "test_pretrained.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))
