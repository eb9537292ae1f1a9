"""data.workers = -1 (the default): input worker processes sized from the host's cores."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs.base import get_config  # noqa: E402
from rmc_jax import train  # noqa: E402
from rmc_jax.data import pipeline as pipe  # noqa: E402


@pytest.mark.parametrize("cores, platform, devices, expected", [
    (2, "cpu", 1, 1),          # the CPU step uses every core: one worker decodes ahead
    (1, "cpu", 1, 0),          # ... none on a one-core host
    (64, "cpu", 1, 1),
    (16, "gpu", 1, 14),        # one H200 with 16 cores: all but the trainer's two
    (48, "gpu", 1, 16),        # at most 16 per accelerator
    (128, "gpu", 8, 126),
    (256, "gpu", 8, 128),
    (2, "gpu", 1, 1),          # at least one
    (8, "tpu", 4, 6),
])
def test_auto_workers_from_cores_and_accelerators(cores, platform, devices, expected):
    assert pipe.auto_workers(cores, platform, devices) == expected


def test_host_cores_is_this_process_share():
    cores = pipe.host_cores()
    assert 1 <= cores <= (os.cpu_count() or cores)
    if hasattr(os, "sched_getaffinity"):
        assert cores == len(os.sched_getaffinity(0))


def test_resolve_input_workers(capsys):
    assert get_config().data.workers == pipe.AUTO_WORKERS == -1
    assert get_config("smoke").data.workers == 0
    assert train.resolve_input_workers(3) == 3
    assert train.resolve_input_workers(0, saved=2) == 0     # as set: the resume check decides
    assert train.resolve_input_workers(-1, saved=2) == 2    # the checkpoint's order of examples
    assert "the resumed checkpoint's" in capsys.readouterr().out
    assert train.resolve_input_workers(-1) == pipe.auto_workers()
    printed = capsys.readouterr().out
    assert f"input workers: {pipe.auto_workers()} (data.workers=-1: " in printed
    assert f"{pipe.host_cores()} cores" in printed
    with pytest.raises(ValueError, match="data.workers = -2"):
        train.resolve_input_workers(-2)
