"""Memory and time of an image-report loss per backend, as the batch grows.

For each batch size B and each way of computing ``rmc_jax.losses.global_contrastive_loss``
(symmetric InfoNCE) or, with ``--loss sigmoid``, ``sigmoid_contrastive_loss`` (SigLIP's, its bias
fixed at -10) (dense, tiled, and the sharded gather/ring backends on simulated CPU devices) this
compiles forward+backward, reads XLA's ``memory_analysis()`` (temporary bytes per device), and
times the step (median of ``--repeats`` runs after one warm-up) when it fits
``--memory-limit-gib``.

    python tools/bench_losses.py                       # B in {1k, 4k, 16k, 65k}, E = 512
    python tools/bench_losses.py --batch 1024 4096 --repeats 5
    python tools/bench_losses.py --loss sigmoid --max-timed-batch 4096 --large-batch-backends none

Prints a Markdown table. The sharded backends run on ``--devices`` simulated CPU devices that
share this machine's cores: their memory is per device, their time is not a scaling figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", choices=("infonce", "sigmoid"), default="infonce")
    parser.add_argument("--batch", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=512, help="rows per block, tiled backend")
    parser.add_argument("--devices", type=int, default=8, help="simulated devices, sharded")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-limit-gib", type=float, default=12.0,
                        help="compile only (no timing) above this many temporary GiB")
    parser.add_argument("--max-run-seconds", type=float, default=400.0,
                        help="skip timing at larger batches once a step took longer than this")
    parser.add_argument("--backends", nargs="+", default=["dense", "tiled", "gather", "ring"])
    parser.add_argument("--max-timed-batch", type=int, default=16384,
                        help="above this batch only --large-batch-backends are timed "
                             "(the others are compiled for their memory only)")
    parser.add_argument("--large-batch-backends", nargs="+", default=["tiled"])
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # The simulated device count must be set before JAX starts.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
    import functools

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import rmc_jax.losses as L

    mesh = jax.make_mesh((args.devices,), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))

    if args.loss == "sigmoid":
        def image_report_loss(img, txt, temperature, **kwargs):
            return L.sigmoid_contrastive_loss(img, txt, temperature, -10.0, **kwargs)
    else:
        image_report_loss = L.global_contrastive_loss

    def build(backend):
        if backend == "dense":
            loss = image_report_loss
        elif backend == "tiled":
            loss = functools.partial(image_report_loss, chunk_size=args.chunk)
        else:
            local = functools.partial(image_report_loss, axis_name="data", backend=backend)
            loss = jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P()),
                                 out_specs=P())
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    def inputs(batch, backend):
        keys = jax.random.split(jax.random.key(0), 2)
        img, txt = (jax.random.normal(k, (batch, args.dim), jnp.float32) for k in keys)
        img, txt = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (img, txt))
        if backend in ("gather", "ring"):
            sharding = NamedSharding(mesh, P("data"))
            img, txt = jax.device_put(img, sharding), jax.device_put(txt, sharding)
        return img, txt, jnp.float32(0.07)

    print(f"# bench_losses --loss {args.loss}: jax {jax.__version__}, "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores, E = {args.dim}, tiled chunk = {args.chunk}, "
          f"sharded over {args.devices} simulated devices\n")
    print("| B | backend | temp memory / device | fwd+bwd time (median) | loss |")
    print("|---:|---|---:|---:|---:|")
    too_slow = set()
    for batch in args.batch:
        for backend in args.backends:
            fn = build(backend)
            x = inputs(batch, backend)
            compiled = fn.lower(*x).compile()
            temp_gib = compiled.memory_analysis().temp_size_in_bytes / 2**30
            timing, value = "not run (memory)", ""
            if temp_gib > args.memory_limit_gib:
                pass
            elif backend in too_slow or (batch > args.max_timed_batch
                                         and backend not in args.large_batch_backends):
                timing = "not run (time)"
            else:
                jax.block_until_ready(compiled(*x))
                times = []
                for _ in range(args.repeats if batch < 32768 else 1):
                    start = time.perf_counter()
                    out = jax.block_until_ready(compiled(*x))
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                timing, value = f"{seconds * 1e3:,.1f} ms", f"{float(out[0]):.4f}"
                if seconds > args.max_run_seconds:
                    too_slow.add(backend)
            print(f"| {batch:,} | {backend} | {temp_gib:,.3f} GiB | {timing} | {value} |")
            sys.stdout.flush()
            del compiled, x


if __name__ == "__main__":
    main()
