"""experiments/device_check.sh end to end on the CPU (ALLOW_CPU=1), tiny sizes: the script a
GPU or TPU host runs must install nothing here, run the benchmark group, the trainer and the
largest-batch search, print their figures and write them into a BENCHMARKS.md."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
from tools import largest_batch, run_summary  # noqa: E402


# ~3 min; the parts are covered by the deadline test, test_bench_reference, the largest-batch
# and run_summary tests
@pytest.mark.slow
def test_device_check_script_runs_on_cpu(tmp_path):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\nearlier text\n")
    env = dict(os.environ, ALLOW_CPU="1", PYTHON=sys.executable, OUT=str(tmp_path / "out"),
               BATCH="4", ROUNDS="1", STEPS="1", BENCH_ONLY="bf16, base global",
               MATMUL_SIZE="256", TRAIN_SECONDS="300", TRAIN_STEPS="20", TRAIN_BATCH="4",
               TEXT_LEN="16",
               WORKERS="0", TRAIN_CONFIG="configs/base.py:smoke",
               LARGEST_CONFIG="configs/base.py:smoke", LARGEST_VERIFY="0",
               LARGEST_ARGS="--dtype float32 --memory_gb 0.05 --start 4 --multiple 4 "
                            "--max_probes 2",
               BENCHMARKS_MD=str(benchmarks), XLA_FLAGS="")  # one CPU device
    result = subprocess.run(["bash", os.path.join(ROOT, "experiments", "device_check.sh")],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    assert "backend cpu" in (out / "devices.txt").read_text()
    bench = json.loads((out / "bench.json").read_text())
    (row,) = bench["groups"]["accelerator"]
    assert row["label"] == "rmc_jax bf16, base global" and row["spec"]["batch"] == 4
    assert row["median"] > 0 and 0 < row["mfu_f32"] < 1.5
    assert row["info"]["kernels"] == "cpu" and row["info"]["compiled_bytes"] > 0
    assert "| rmc_jax bf16, base global |" in (out / "bench.md").read_text()
    summary = (out / "train_summary.txt").read_text()
    assert summary.startswith(
        "trainer, `configs/base.py:smoke` batch 4, 16 report tokens, 0 input workers: ")
    assert "examples/s median" in summary
    largest = json.loads((out / "largest_batch.json").read_text())
    assert largest["batch"] % 4 == 0 and len(largest["probes"]) == 2
    assert largest["predicted"] and largest["remat"] == "full" and largest["chunk_size"] == 1024
    assert largest["text_len"] == 16
    written = benchmarks.read_text()
    assert written.startswith("# Benchmarks\n\nearlier text\n")
    block = written.split("<!-- device_check.sh: begin -->")[1]
    for part in ("backend cpu", "jax ", "| rmc_jax bf16, base global |", "trainer, ",
                 "Largest global batch on one cpu"):
        assert part in block, part
    # The same block in $OUT (rewritten after each part, so a run cut short keeps it).
    assert (out / "report.md").read_text().strip() == block.split(
        "<!-- device_check.sh: end -->")[0].strip()


def test_largest_batch_search_on_a_memory_model():
    """The search on a known memory curve (affine plus a little curvature, as a step's is):
    it lands on the largest multiple that fits, probing little beyond the two-point fit."""
    def memory(batch):
        return 1000 + 10 * batch + 0.002 * batch ** 2

    budget = memory(700) + 1
    result = largest_batch.search(memory, budget, start=64, multiple=8, tolerance=0,
                                  max_probes=8)
    assert result["batch"] == 696 and result["over"] == 704
    assert result["predicted"] and len(result["probes"]) <= 8
    fits = largest_batch.search(memory, budget, start=64, multiple=8, max_probes=3)
    assert fits["batch"] <= 696 and memory(fits["batch"]) <= budget
    tiny = largest_batch.search(memory, memory(10), start=64, multiple=8, max_probes=6)
    assert tiny["batch"] == 8 and tiny["over"] == 16
    with pytest.raises(ValueError, match="max_probes"):
        largest_batch.search(memory, budget, start=64, multiple=8, max_probes=1)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_run_summary_skips_the_first_windows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": 10, "examples_per_second": 1.0, "mfu": 0.01, "total": 5.0},
                  {"step": 20, "examples_per_second": 30.0, "mfu": 0.3, "total": 4.0},
                  {"step": 20, "eval/x": 1.0},
                  {"step": 30, "examples_per_second": 10.0, "mfu": 0.1, "total": 3.5},
                  {"step": 40, "examples_per_second": 20.0, "total": 3.0}])
    s = run_summary.summarize(str(path))
    assert s["windows"] == 3 and s["steps"] == 40 and s["loss"] == 3.0
    assert s["examples_per_second"] == (20.0, 10.0, 30.0)
    assert s["mfu"] == (pytest.approx(0.2), 0.1, 0.3)
    with pytest.raises(SystemExit, match="2 logged training windows"):
        run_summary.summarize(_short(tmp_path), skip=2)


def _short(tmp_path):
    path = tmp_path / "short.jsonl"
    _write(path, [{"step": 1, "examples_per_second": 1.0}, {"step": 2, "examples_per_second": 2.0}])
    return str(path)


def test_device_check_deadline_skips_what_does_not_fit(tmp_path):
    """DEADLINE bounds the whole script: with a few seconds, every part is skipped and says
    so, and the report still has the device line."""
    env = dict(os.environ, ALLOW_CPU="1", PYTHON=sys.executable, OUT=str(tmp_path / "out"),
               DEADLINE="5", BENCHMARKS_MD="", XLA_FLAGS="")
    result = subprocess.run(["bash", os.path.join(ROOT, "experiments", "device_check.sh")],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    assert "bench not run" in result.stderr and not (out / "bench.md").exists()
    assert (out / "train_summary.txt").read_text().startswith("trainer: not run, ")
    assert (out / "largest_batch.md").read_text().startswith("largest batch: not searched")
    report = (out / "report.md").read_text()
    assert "backend cpu" in report and "trainer: not run" in report
