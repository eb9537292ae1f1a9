"""experiments/device_check.sh end to end on the CPU (ALLOW_CPU=1), tiny sizes: the script a
GPU or TPU host runs must install nothing here, run the benchmark group and the trainer, and
print their figures."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
from tools import run_summary  # noqa: E402


def test_device_check_script_runs_on_cpu(tmp_path):
    env = dict(os.environ, ALLOW_CPU="1", PYTHON=sys.executable, OUT=str(tmp_path / "out"),
               BATCH="4", ROUNDS="1", STEPS="1", BENCH_ONLY="bf16, base global",
               MATMUL_SIZE="256", TRAIN_SECONDS="300", TRAIN_STEPS="20", WORKERS="0",
               TRAIN_CONFIG="configs/base.py:smoke", XLA_FLAGS="")  # one CPU device
    result = subprocess.run(["bash", os.path.join(ROOT, "experiments", "device_check.sh")],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    assert "backend cpu" in (out / "devices.txt").read_text()
    bench = json.loads((out / "bench.json").read_text())
    (row,) = bench["groups"]["accelerator"]
    assert row["label"] == "rmc_jax bf16, base global" and row["spec"]["batch"] == 4
    assert row["median"] > 0 and 0 < row["mfu_f32"] < 1.5
    assert "| rmc_jax bf16, base global |" in (out / "bench.md").read_text()
    summary = (out / "train_summary.txt").read_text()
    assert summary.startswith("trainer: ") and "examples/s median" in summary


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
