"""Model FLOPs utilisation: FLOPs per step from XLA's cost analysis over a peak FLOP/s.

MFU = (FLOPs one training step executes) × (steps per second) / (peak FLOP/s of the devices).
The numerator comes from the cost analysis of the *lowered* step, the module as JAX emits it,
before the backend's passes: on GPU those passes turn matmuls into cuBLAS/cuDNN library calls
that the compiled module's cost analysis does not count (on an H200 it reported 11% of the
matmul FLOPs of the base configuration's step), while the lowered module counts every ``dot``
on every backend. The lowered module is the whole, unpartitioned computation, so its count
covers all devices of the program. XLA counts a ``while``/``scan`` body once, so with
``scan_layers=True`` (or a scanned loss backend) the figure is an underestimate. The peak is
the vendor's dense figure for known accelerators, and on CPU it is measured: the best of a
few large matmuls on this host in each compute dtype the run's towers use, the fastest of them
(on a CPU with bf16 units a bf16 matmul runs about 4x the float32 one, so a float32 peak would
put a bf16 step's MFU near or above 1).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense peak FLOP/s per chip in bf16 (the precision MFU is usually quoted in).
_ACCELERATOR_PEAKS = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
    "a100": 312e12,
    "h100": 989e12,
    "h200": 989e12,
    "b200": 2250e12,
}


# Side of the CPU peak matmul: on a 2-core host with AMX 1024² reaches what 2048² does (f32 300
# against 292 GFLOP/s, bf16 1,360 against 1,160) in a third of the time, at every run's start.
CPU_PEAK_SIZE = 1024


def cost_flops(stage) -> float | None:
    """FLOPs of one call of a ``jax.stages.Lowered`` (the whole program: what MFU needs) or a
    ``jax.stages.Compiled`` (per device, as the backend compiled it), or None if XLA has no
    count."""
    try:
        analysis = stage.cost_analysis()
    except Exception:  # some backends do not implement cost analysis
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def measure_matmul_peak(dtype=jnp.float32, size: int = CPU_PEAK_SIZE, repeats: int = 8,
                        device=None) -> float:
    """Best FLOP/s of a ``[size, size] @ [size, size]`` matmul on ``device``; 16-bit operands
    accumulate in float32, as the model's matmuls do (``layers.Dense``)."""
    device = device or jax.devices()[0]
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(key_a, (size, size), dtype), device)
    b = jax.device_put(jax.random.normal(key_b, (size, size), dtype), device)
    accumulate = jnp.float32 if jnp.dtype(dtype).itemsize == 2 else None
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=accumulate))
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def vendor_peak(device=None) -> float | None:
    """The vendor's dense bf16 peak FLOP/s of one ``device`` (default: the first) when it is a
    known accelerator; None for CPUs and unknown devices."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    kind = device.device_kind.lower()
    return next((peak for name, peak in _ACCELERATOR_PEAKS.items() if name in kind), None)


def peak_flops(devices=None, compute_dtypes=("float32",)) -> float:
    """Peak FLOP/s of ``devices`` together (all local devices by default).

    Known accelerators: vendor bf16 dense peak × number of devices. CPU: simulated devices
    share the host's cores, so the peak is one host figure: the best ``CPU_PEAK_SIZE``² matmul
    in each of ``compute_dtypes`` (the towers' compute dtypes), the highest of them, so that
    MFU is measured against the fastest precision the step computes in. Measure it before
    input worker processes start: they share the cores and would lower the figure.
    """
    devices = list(devices or jax.local_devices())
    if devices[0].platform == "cpu":
        return max(measure_matmul_peak(dtype, device=devices[0])
                   for dtype in {jnp.dtype(dtype) for dtype in compute_dtypes})
    peak = vendor_peak(devices[0])
    if peak:
        return peak * len(devices)
    dtype = jnp.bfloat16 if devices[0].platform in ("tpu", "gpu") else jnp.float32
    return measure_matmul_peak(dtype, size=4096, device=devices[0]) * len(devices)


def mfu(flops_per_step: float | None, steps_per_second: float, peak: float) -> float | None:
    """Fraction of ``peak`` that ``flops_per_step`` at ``steps_per_second`` achieves."""
    if not flops_per_step or not peak:
        return None
    return flops_per_step * steps_per_second / peak
