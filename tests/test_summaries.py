"""Metric outputs: TensorBoard event files (read back by TensorBoard itself), the progress bar,
JSON lines, and the MFU arithmetic."""

import io
import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from rmc_jax import flops, summaries


def test_crc32c_known_vectors():
    # RFC 3720 B.4 check value, and the iSCSI all-zero / all-one 32-byte vectors.
    assert summaries.crc32c(b"123456789") == 0xE3069283
    assert summaries.crc32c(bytes(32)) == 0x8A9136AA
    assert summaries.crc32c(b"\xff" * 32) == 0x62A8AB43


def test_tfrecord_framing():
    record = summaries.tfrecord(b"abc")
    (length,) = struct.unpack("<Q", record[:8])
    assert length == 3 and record[12:15] == b"abc" and len(record) == 8 + 4 + 3 + 4


def read_scalars(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_file_is_read_by_tensorboard(tmp_path):
    writer = summaries.EventFileWriter(str(tmp_path))
    writer.scalars(1, {"loss": 2.5, "loss/global": 1.25})
    writer.scalars(20, {"loss": 0.125, "lr": 3e-4})
    writer.scalars(2**40, {"loss": -1.0})  # int64 steps beyond 32 bits
    writer.close()
    scalars = read_scalars(str(tmp_path))
    assert scalars["loss"] == [(1, 2.5), (20, 0.125), (2**40, -1.0)]
    assert scalars["loss/global"] == [(1, 1.25)]
    assert scalars["lr"][0][0] == 20 and scalars["lr"][0][1] == pytest.approx(3e-4, rel=1e-7)


def test_summary_writer_outputs(tmp_path, capsys):
    writer = summaries.SummaryWriter(str(tmp_path), total_steps=40, progress=False)
    writer.write(20, {"loss": np.float32(1.5), "examples_per_second": 10.0})
    writer.write(40, {"loss": 1.0, "examples_per_second": 12.0})
    writer.close()
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert lines == [{"step": 20, "loss": 1.5, "examples_per_second": 10.0},
                     {"step": 40, "loss": 1.0, "examples_per_second": 12.0}]
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["[step 20/40] loss=1.5 examples_per_second=10",
                       "[step 40/40] loss=1 examples_per_second=12"]
    assert len(os.listdir(tmp_path / "tensorboard")) == 1


def test_diagnostics_stay_out_of_the_console(tmp_path, capsys):
    writer = summaries.SummaryWriter(str(tmp_path), total_steps=2, progress=False,
                                     console_exclude=("param_norm/",))
    writer.write(2, {"loss": 1.0, "param_norm/image": 3.0})
    writer.close()
    assert capsys.readouterr().out.splitlines() == ["[step 2/2] loss=1"]
    assert json.loads(open(tmp_path / "metrics.jsonl").read()) == {
        "step": 2, "loss": 1.0, "param_norm/image": 3.0}
    assert read_scalars(str(tmp_path / "tensorboard"))["param_norm/image"] == [(2, 3.0)]


def test_disabled_writer_writes_nothing(tmp_path, capsys):
    writer = summaries.SummaryWriter(str(tmp_path), total_steps=4, enabled=False)
    writer.write(1, {"loss": 1.0})
    writer.message("hello")
    writer.close()
    assert os.listdir(tmp_path) == [] and capsys.readouterr().out == ""


def test_progress_bar_eta_and_redraw():
    stream = io.StringIO()
    bar = summaries.ProgressBar(total_steps=100, stream=stream, width=10)
    assert bar.eta(10, now=0.0) is None
    bar._start = (0.0, 10)  # 10 steps took 30 s from the first update: 3 s per step
    assert bar.eta(20, now=30.0) == pytest.approx(240.0)
    line = bar.line(20, {"examples_per_second": 8.0, "loss": 1.25}, now=30.0)
    assert line == "step 20/100 [==>       ]  20% 8.0 ex/s ETA 4m00s loss=1.25"
    bar.update(30, {"total": 1.0})
    bar.update(31)  # no new metrics: keeps showing the last ones
    out = stream.getvalue()
    assert out.count("\r") == 2 and out.endswith("loss=1\x1b[K")
    bar.finish()
    assert stream.getvalue().endswith("\n")
    assert summaries.format_duration(3725) == "1h02m05s"


def test_mfu_arithmetic_and_flop_count():
    compiled = __import__("jax").jit(jnp.matmul).lower(
        jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    assert flops.cost_flops(compiled) == pytest.approx(2 * 64 * 32 * 16)
    assert flops.mfu(1e9, 2.0, 4e9) == pytest.approx(0.5)
    assert flops.mfu(None, 2.0, 4e9) is None
    assert flops.measure_matmul_peak(size=128, repeats=2) > 0


def test_cpu_peak_is_the_fastest_of_the_compute_dtypes(monkeypatch):
    measured = []

    def matmul_peak(dtype=jnp.float32, size=flops.CPU_PEAK_SIZE, repeats=8, device=None):
        measured.append((str(jnp.dtype(dtype)), size))
        return {"float32": 3e11, "bfloat16": 1.2e12}[str(jnp.dtype(dtype))]

    monkeypatch.setattr(flops, "measure_matmul_peak", matmul_peak)
    assert flops.peak_flops(compute_dtypes=("float32",)) == 3e11
    assert flops.peak_flops(compute_dtypes=(jnp.bfloat16, "float32", "bfloat16")) == 1.2e12
    size = flops.CPU_PEAK_SIZE
    assert sorted(measured) == [("bfloat16", size), ("float32", size), ("float32", size)]


def test_flop_count_of_a_sharded_step_covers_all_devices():
    """MFU counts the whole program: a batch-sharded matmul over 8 devices counts 8 devices'
    FLOPs when lowered, while the compiled, partitioned module counts one device's share."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    x = jax.device_put(jnp.ones((64, 32)), NamedSharding(mesh, PartitionSpec("data")))
    lowered = jax.jit(jnp.matmul).lower(x, jnp.ones((32, 16)))
    assert flops.cost_flops(lowered) == pytest.approx(2 * 64 * 32 * 16, rel=1e-3)
    per_device = flops.cost_flops(lowered.compile())
    assert per_device == pytest.approx(2 * 64 * 32 * 16 / jax.device_count(), rel=1e-3)
