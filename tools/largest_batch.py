"""The largest global batch whose training step fits one device, by XLA's memory account.

    python tools/largest_batch.py                                   # configs/b16.py:roi, bf16,
                                                                    # remat=full, chunk 1024
    python tools/largest_batch.py --config configs/base.py:smoke --memory_gb 0.5 --start 4
                                                                    # CPU: a memory budget

Each probe lowers and compiles the train step (``rmc_jax.train.make_train_step``) of the
config at one batch size from abstract inputs, on a one-device mesh: nothing is allocated. The
memory the compiled step needs is XLA's figure (arguments + outputs - donated + temporaries,
``tools/bench.py``'s ``compiled_bytes``); the device's is its ``bytes_limit`` (GPU, TPU) or
``--memory_gb``. With the tiled contrastive losses (``loss.chunk_size``) memory is affine in
the batch, so two probes (``--start`` and twice that) give the line, the batch where it meets
``--headroom`` x the device's memory is probed next, and probes continue (bisection between
the largest batch that fits and the smallest that does not) until the two are within
``--tolerance`` or ``--max_probes`` compiles were spent. ``--verify`` then runs one real step
at the answer. Batches are multiples of ``--multiple``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, ROOT)
from tools.bench import memory_size as size  # noqa: E402


def load_config(spec: str):
    """'configs/b16.py:roi,dtype=bfloat16' -> that file's get_config('roi,dtype=bfloat16')."""
    path, _, arg = spec.partition(":")
    path = path if os.path.isabs(path) else os.path.join(ROOT, path)
    module_spec = importlib.util.spec_from_file_location("rmc_jax_bench_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def configure(config, *, dtype: str, remat: str, chunk_size: int, scan_layers: bool,
              text_len: int = 0):
    """The memory settings under test, on both towers and the loss (and the report tokens)."""
    for tower in (config.model.vision, config.model.text):
        tower.update(dtype=dtype, remat=remat, scan_layers=scan_layers)
    config.loss.chunk_size = chunk_size
    if text_len:
        config.data.max_text_len = text_len
    config.mesh.update(data=1, fsdp=1)
    return config


def lower_step(config, batch: int, kernels: str | None = None):
    """The train step of ``config`` at global ``batch`` on a one-device mesh, lowered from
    abstract state and inputs (a ``jax.stages.Lowered``; nothing is allocated)."""
    import jax
    import jax.numpy as jnp

    from rmc_jax import sharding as shd
    from rmc_jax import train as trainer
    from rmc_jax.models import layers
    from tools.bench import batch_label_names, random_batch

    config = config.copy_and_resolve_references()
    config.batch_size = 1
    example = random_batch(config)  # shapes and dtypes of one example
    mesh = shd.make_mesh(1, 1)
    model = trainer.build_model(config.model)
    tx, schedule = trainer.make_optimizer(config)
    with layers.kernels_for(kernels or layers.kernel_platform()):
        state = jax.eval_shape(lambda: trainer.init_state(model, tx, config, mesh)[0])
        sharding = shd.param_shardings(state, mesh)
        step = trainer.make_train_step(model, tx, schedule, config, mesh, sharding,
                                       label_names=batch_label_names())
        inputs = {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype,
                                          sharding=shd.batch_sharding(mesh))
                  for k, v in example.items()}
        concepts = (jax.ShapeDtypeStruct((24, config.data.max_caption_len), jnp.int32),) * 2
        return step.lower(state, inputs, concepts, None)


def step_memory(config, batch: int, kernels: str | None = None) -> int:
    """Bytes the compiled train step of ``config`` at global ``batch`` needs on one device."""
    import jax

    from tools.bench import compiled_bytes

    needed = compiled_bytes(lower_step(config, batch, kernels).compile())
    if needed is None:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis")
    return needed


def search(memory_of, budget: float, *, start: int, multiple: int, tolerance: float = 0.05,
           max_probes: int = 5, log=lambda line: None) -> dict:
    """Largest multiple of ``multiple`` whose ``memory_of(batch)`` <= ``budget`` bytes.

    Probes ``start`` and twice that, then the batch where the line through the two probes
    nearest the budget (one on each side once there are both) meets it; when two guesses in a
    row land on the same side, the next probe halves the interval instead. Stops when
    the smallest failing and the largest fitting batch are one ``multiple`` (or ``tolerance``
    of the batch) apart, or after ``max_probes`` probes.
    -> {'batch': largest fitting batch probed (0 if none), 'over': smallest failing batch
    probed (None if none), 'predicted': the first two probes' answer, 'probes': [(batch,
    bytes)]}.
    """
    if max_probes < 2:
        raise ValueError("max_probes must be >= 2 (two probes give the affine fit)")
    probes: dict[int, int] = {}
    sides: list[bool] = []

    def probe(batch):
        probes[batch] = memory_of(batch)
        sides.append(probes[batch] <= budget)
        log(f"batch {batch}: {size(probes[batch])} ({'fits' if sides[-1] else 'over'})")

    def rounded(batch):
        return max(multiple, int(batch) // multiple * multiple)

    def crossing(a, b):
        """Where the line through probes a and b meets the budget (None if it is flat)."""
        if probes[b] == probes[a]:
            return None
        return a + (budget - probes[a]) * (b - a) / (probes[b] - probes[a])

    probe(rounded(start))
    probe(2 * rounded(start))
    guess = crossing(*sorted(probes))
    predicted = rounded(guess) if guess is not None and guess > 0 else None
    while len(probes) < max_probes:
        fit = sorted(b for b, m in probes.items() if m <= budget)
        over = sorted(b for b, m in probes.items() if m > budget)
        lo, hi = (fit[-1] if fit else 0), (over[0] if over else None)
        if hi is not None and (hi - lo <= multiple or hi - lo <= tolerance * lo):
            break
        same_side = len(sides) >= 4 and sides[-1] == sides[-2]
        if hi is None:  # everything fits: extrapolate from the two largest probes
            guess = crossing(fit[-2], fit[-1])
            nxt = rounded(guess) if guess is not None else 2 * lo
        elif not fit:  # nothing fits: the line through the two smallest probes, or halve
            guess = crossing(over[0], over[1]) if len(over) > 1 else None
            nxt = rounded(guess) if guess is not None and guess > 0 else rounded(hi // 2)
        elif same_side:
            nxt = rounded((lo + hi) // 2)
        else:
            nxt = rounded(crossing(lo, hi))
        nxt = max(nxt, lo + multiple) if hi is None else min(max(nxt, lo + multiple),
                                                               hi - multiple)
        if nxt in probes or nxt <= 0:
            break
        probe(nxt)
    fit = [b for b, m in probes.items() if m <= budget]
    over = [b for b, m in probes.items() if m > budget]
    return {"batch": max(fit, default=0), "over": min(over, default=None),
            "predicted": predicted, "probes": sorted(probes.items())}


def verify(config, batch: int, kernels: str | None = None) -> dict:
    """One real train step at ``batch`` (state and batch allocated): ran or the error."""
    import jax
    import jax.numpy as jnp

    from rmc_jax import sharding as shd
    from rmc_jax import train as trainer
    from rmc_jax.models import layers
    from tools.bench import batch_label_names, device_peak_bytes, random_batch

    config = config.copy_and_resolve_references()
    config.batch_size = batch
    mesh = shd.make_mesh(1, 1)
    model = trainer.build_model(config.model)
    tx, schedule = trainer.make_optimizer(config)
    try:
        with layers.kernels_for(kernels or layers.kernel_platform()):
            state, sharding = trainer.init_state(model, tx, config, mesh)
            step = trainer.make_train_step(model, tx, schedule, config, mesh, sharding,
                                           label_names=batch_label_names())
            concepts = (jnp.ones((24, config.data.max_caption_len), jnp.int32),) * 2
            start = time.perf_counter()
            state, metrics = step(state, shd.global_batch(random_batch(config), mesh),
                                  concepts, None)
            jax.block_until_ready(metrics)
        return {"ran": True, "seconds": time.perf_counter() - start,
                "total": float(metrics["total"]), "peak_bytes": device_peak_bytes()}
    except Exception as error:  # out of memory (RESOURCE_EXHAUSTED) or another failure
        return {"ran": False, "error": str(error).splitlines()[0][:300]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/b16.py:roi",
                        help="config file and argument, as --config of rmc_jax.main")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--remat", default="full", help="none, full or dots (both towers)")
    parser.add_argument("--chunk_size", type=int, default=1024, help="loss.chunk_size")
    parser.add_argument("--no_scan", action="store_true",
                        help="unrolled layers (default: scanned, which compiles faster)")
    parser.add_argument("--text_len", type=int, default=0,
                        help="report tokens (default: the config's data.max_text_len)")
    parser.add_argument("--kernels", default=None,
                        help="trace with this platform's kernels (cpu, cuda, tpu)")
    parser.add_argument("--memory_gb", type=float, default=0.0,
                        help="device memory in GiB (default: the device's bytes_limit)")
    parser.add_argument("--headroom", type=float, default=0.95,
                        help="fraction of the device memory a step may take")
    parser.add_argument("--start", type=int, default=256, help="first probe's batch")
    parser.add_argument("--multiple", type=int, default=64)
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="stop when the failing and fitting batches are this close")
    parser.add_argument("--max_probes", type=int, default=5, help="compiles at most")
    parser.add_argument("--verify", action="store_true", help="run one step at the answer")
    parser.add_argument("--output", help="also write the result here (JSON)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import jax

    device = jax.devices()[0]
    limit = args.memory_gb * 2**30 if args.memory_gb else (
        (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None)
    if not limit:
        raise SystemExit(f"{device.platform}: the device reports no memory limit; pass "
                         "--memory_gb")
    config = configure(load_config(args.config), dtype=args.dtype, remat=args.remat,
                       chunk_size=args.chunk_size, scan_layers=not args.no_scan,
                       text_len=args.text_len)
    started = time.perf_counter()
    result = search(lambda b: step_memory(config, b, args.kernels), args.headroom * limit,
                    start=args.start, multiple=args.multiple, tolerance=args.tolerance,
                    max_probes=args.max_probes,
                    log=lambda line: print(f"  [largest batch] {line}", file=sys.stderr,
                                           flush=True))
    result.update(config=args.config, dtype=args.dtype, remat=args.remat,
                  text_len=config.data.max_text_len,
                  chunk_size=args.chunk_size, scan_layers=not args.no_scan,
                  kernels=args.kernels, limit_bytes=int(limit), headroom=args.headroom,
                  device=f"{device.device_kind} ({device.platform})",
                  search_seconds=time.perf_counter() - started)
    if args.verify and result["batch"]:
        result["verify"] = verify(config, result["batch"], args.kernels)
    line = (f"Largest global batch on one {result['device']} ({size(limit)}, "
            f"{100 * args.headroom:.0f}% of it for the step): **{result['batch']:,}** "
            f"(`{args.config}`, {config.data.max_text_len} report tokens, {args.dtype}, "
            f"remat={args.remat}, "
            f"loss.chunk_size={args.chunk_size}, "
            f"{'scanned' if not args.no_scan else 'unrolled'} layers)")
    fit = dict(result["probes"]).get(result["batch"])
    if fit:
        line += f": the compiled step needs {size(fit)}"
    if result["over"]:
        line += f"; {result['over']:,} needs {size(dict(result['probes'])[result['over']])}"
    if result["predicted"]:
        line += f"; the affine fit of the first two probes predicted {result['predicted']:,}"
    if "verify" in result:
        v = result["verify"]
        line += (f"; one real step at that batch ran in {v['seconds']:.1f} s" +
                 (f", device peak {size(v['peak_bytes'])}" if v.get("peak_bytes")
                  else "") if v["ran"] else f"; one real step at that batch failed: "
                 f"{v['error']}")
    line += (f". {len(result['probes'])} probes, {result['search_seconds']:.0f} s "
             "(compiles).")
    print(line)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main()
