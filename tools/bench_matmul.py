"""The transformer layer's matmuls one by one: XLA's CPU kernels against PyTorch's (oneDNN).

On CPU a training step runs about as fast as the matmul kernels its framework calls. This
measures GFLOP/s of every matmul one image-tower layer runs in training, at the shapes of the
base configuration and of ViT-S/16 at 224 px (batch 32, from ``tools/bench.py``'s models):
forward, input gradient and weight gradient of the ``qkv``, ``out``, ``fc1`` and ``fc2``
projections, and the attention's two batched matmuls (logits, probabilities x values) forward.

* rmc_jax: ``jax.lax.dot_general`` / ``jnp.einsum`` with the operand layouts and dimension
  numbers ``layers.Dense`` and the attention use: bf16 operands accumulated in float32 (the
  result float32, as the layers ask for), or float32 throughout.
* PyTorch: the matmuls ``nn.Linear``'s autograd runs (``x @ W.T``, ``g @ W``, ``g.T @ x``, the
  weight stored [out, in]) and ``q @ k^T``, ``p @ v`` in the [B, N, T, H] layout of
  ``F.scaled_dot_product_attention``; bf16 (oneDNN accumulates in float32, returns bf16) or
  float32.

Each contestant (framework x threads) is a worker process; the parent asks them in turn,
rotating the order each round (``bench.Worker``), so the shared machine's load drifts over all
alike. Per matmul and dtype a round's figure is the median of ``--repeats`` calls; the table
gives the median over rounds, and rows "layer, forward+backward" sum the times of one layer's
matmuls (each projection's three, the attention's two forward matmuls twice more for its
backward). A 2048³ matmul, the peak ``tools/bench.py`` divides by for MFU, is measured alongside:
a layer's matmuls at its rate would be 100 % MFU.

    python tools/bench_matmul.py                   # base and vits, 2 threads and 1 core
    python tools/bench_matmul.py --models vits --rounds 3 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (tools/bench.py: models, worker protocol, BENCHMARKS.md blocks)

PROJECTIONS = ("qkv", "out", "fc1", "fc2")
PASSES = ("forward", "input grad", "weight grad")
ATTENTION = ("attention logits", "attention probs x values")
# The large square matmul whose rate is the MFU peak in tools/bench.py (2048 there, on CPU).
PEAK_REFERENCE = {"name": "2048 x 2048 square (the MFU peak)", "kind": "forward",
                  "shape": (1, 2048, 2048, 2048), "flops": 2.0 * 2048 ** 3}


def layer_matmuls(model: str, batch: int = 32) -> list[dict]:
    """The matmuls of one image-tower layer of ``bench.MODELS[model]`` at ``batch``:
    [{"name", "kind", "shape", "flops", "per_step"}]. Shapes: (B, T, K, N) for a projection
    (activations [B, T, K], kernel [K, N]); (B, T, heads, head_dim) for the attention.
    ``per_step``: how often one forward+backward runs a matmul of that shape (a projection's
    passes once each; the attention's forward matmuls three times, its backward runs two more
    of each shape)."""
    config = bench.bench_config("global", model, "float32", batch)
    v = config.model.vision
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    width, heads = v.width, v.num_heads
    hidden = int(width * v.mlp_ratio)
    out = []
    for name, (k, n) in zip(PROJECTIONS, ((width, 3 * width), (width, width),
                                          (width, hidden), (hidden, width))):
        for kind in PASSES:
            out.append({"name": f"{name} {kind}", "kind": kind, "shape": (batch, tokens, k, n),
                        "flops": 2.0 * batch * tokens * k * n, "per_step": 1})
    attention = (batch, tokens, heads, width // heads)
    for name in ATTENTION:
        out.append({"name": name, "kind": name, "shape": attention,
                    "flops": 2.0 * batch * heads * tokens * tokens * (width // heads),
                    "per_step": 3})
    return out


def _jax_matmul(kind, shape, dtype):
    """(jitted function, operands) computing one matmul as rmc_jax's layers do."""
    import jax
    import jax.numpy as jnp

    accumulate = jnp.float32 if dtype == "bfloat16" else None
    keys = iter(jax.random.split(jax.random.key(0), 3))

    def normal(*dims):
        return jax.random.normal(next(keys), dims, jnp.dtype(dtype))

    def dot(contract):
        return jax.jit(lambda a, b: jax.lax.dot_general(
            a, b, (contract, ((), ())), preferred_element_type=accumulate))

    if kind in ATTENTION:
        b, t, n, h = shape
        if kind == "attention logits":
            return (jax.jit(lambda q, k: jnp.einsum("btnh,bsnh->bnts", q, k,
                                                    preferred_element_type=accumulate)),
                    (normal(b, t, n, h), normal(b, t, n, h)))
        return (jax.jit(lambda p, v: jnp.einsum("bnts,bsnh->btnh", p, v,
                                                preferred_element_type=accumulate)),
                (normal(b, n, t, t), normal(b, t, n, h)))
    b, t, k, n = shape
    if kind == "forward":          # x [B, T, K] . W [K, N]
        return dot(((2,), (0,))), (normal(b, t, k), normal(k, n))
    if kind == "input grad":       # g [B, T, N] . W [K, N]^T
        return dot(((2,), (1,))), (normal(b, t, n), normal(k, n))
    return dot(((0, 1), (0, 1))), (normal(b, t, k), normal(b, t, n))  # x^T . g over B, T


def _torch_matmul(kind, shape, dtype):
    """(function, operands) computing one matmul as PyTorch's Linear / SDPA layouts do."""
    import torch

    generator = torch.Generator().manual_seed(0)
    torch_dtype = getattr(torch, dtype)

    def normal(*dims):
        return torch.randn(*dims, generator=generator).to(torch_dtype)

    if kind in ATTENTION:
        b, t, n, h = shape
        if kind == "attention logits":
            return (lambda q, k: q @ k.transpose(-1, -2)), (normal(b, n, t, h), normal(b, n, t, h))
        return (lambda p, v: p @ v), (normal(b, n, t, t), normal(b, n, t, h))
    b, t, k, n = shape
    if kind == "forward":          # x [B, T, K] . W [N, K]^T
        return (lambda x, w: x @ w.t()), (normal(b, t, k), normal(n, k))
    if kind == "input grad":       # g [B, T, N] . W [N, K]
        return (lambda g, w: g @ w), (normal(b, t, n), normal(n, k))
    # Linear's weight gradient: g^T [N, B*T] . x [B*T, K]
    return (lambda g, x: g.reshape(-1, n).t() @ x.reshape(-1, k)), (normal(b, t, n),
                                                                   normal(b, t, k))


def _key(model: str | None, matmul: dict, dtype: str) -> str:
    """Results key of one measured matmul (the peak reference belongs to no model)."""
    return f"{model or 'peak'}|{matmul['name']}|{dtype}"


def matmul_worker(spec: dict):
    """Build every (model, matmul, dtype) once; run(n) times each n times -> median seconds."""
    import warnings

    warnings.filterwarnings("ignore")
    if spec["framework"] == "torch":
        import torch

        torch.set_num_threads(spec["threads"])
        build, sync = _torch_matmul, (lambda result: result)
    else:
        import jax

        build, sync = _jax_matmul, jax.block_until_ready
    cases = {}
    matmuls = [(model, m) for model in spec["models"] for m in layer_matmuls(model, spec["batch"])]
    for model, matmul in matmuls + [(None, PEAK_REFERENCE)]:
        for dtype in spec["dtypes"]:
            function, operands = build(matmul["kind"], matmul["shape"], dtype)
            sync(function(*operands))  # compile / first-touch
            cases[_key(model, matmul, dtype)] = (function, operands)

    def run(n):
        seconds = {}
        for key, (function, operands) in cases.items():
            times = []
            for _ in range(n):
                start = time.perf_counter()
                sync(function(*operands))
                times.append(time.perf_counter() - start)
            seconds[key] = statistics.median(times)
        return [sum(seconds.values())], seconds

    return run, {"threads": spec["threads"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["base", "vits"],
                        choices=sorted(bench.MODELS))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="calls per matmul per round")
    parser.add_argument("--threads", nargs="+", default=["2", "1"],
                        help="'2': both cores, as the train step runs; '1': pinned to core 0 "
                             "(taskset), one thread")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    return parser.parse_args(argv)


def contestants(args) -> list[tuple[str, dict]]:
    """[(label, worker spec)] for each framework and thread setting."""
    out = []
    for threads in args.threads:
        for framework, name in (("jax", "rmc_jax (XLA)"), ("torch", "PyTorch (oneDNN)")):
            spec = {"framework": framework, "threads": int(threads), "models": args.models,
                    "dtypes": args.dtypes, "batch": args.batch}
            if threads == "1":
                spec["cpus"] = "0"
            out.append((f"{name}, {threads} thread{'s' if threads != '1' else ''}", spec))
    return out


def measure(args) -> dict[str, dict[str, float]]:
    """label -> {"model|matmul|dtype": median seconds over rounds}."""
    workers = []
    try:
        for label, spec in contestants(args):
            # OMP_WAIT_POLICY=PASSIVE: PyTorch's threads must not spin while XLA's worker runs.
            workers.append(bench.Worker(label, spec, {"OMP_WAIT_POLICY": "PASSIVE"},
                                        script=os.path.abspath(__file__)))
            print(f"  ready: {label}", file=sys.stderr, flush=True)
        per_round = {w.label: [] for w in workers}
        for index in range(args.rounds):
            shift = index % len(workers)
            for w in workers[shift:] + workers[:shift]:
                w.run(args.repeats)
                per_round[w.label].append(w.extra)
            print(f"  round {index + 1} done", file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()
    return {label: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            for label, rounds in per_round.items()}


def markdown(args, results: dict) -> str:
    labels = list(results)
    pairs = [(labels[i], labels[i + 1]) for i in range(0, len(labels), 2)]
    header = ("| matmul | shape | dtype | " + " | ".join(labels) + " | "
              + " | ".join(f"ratio, {a.split(', ')[1]}" for a, _ in pairs) + " |")
    lines = []
    for model in args.models:
        matmuls = layer_matmuls(model, args.batch)
        lines += ["", f"**{model}** ({bench.MODEL_DESCRIPTIONS[model]}; batch "
                  f"{args.batch}): GFLOP/s per matmul, median over rounds; the ratio is "
                  "rmc_jax / PyTorch at the same thread count.", "",
                  header, "|---|---|---|" + "---:|" * (len(labels) + len(pairs))]
        for dtype in args.dtypes:
            rows = [(m["name"], "×".join(map(str, m["shape"])), m["flops"],
                     {label: results[label][_key(model, m, dtype)] for label in labels})
                    for m in matmuls]
            # One layer's forward+backward: every matmul as often as a step runs it.
            rows.append(("**layer, forward+backward**", "",
                         sum(m["per_step"] * m["flops"] for m in matmuls),
                         {label: sum(m["per_step"] * results[label][_key(model, m, dtype)]
                                     for m in matmuls) for label in labels}))
            rows.append((f"*{PEAK_REFERENCE['name']}*", "2048×2048×2048", PEAK_REFERENCE["flops"],
                         {label: results[label][_key(None, PEAK_REFERENCE, dtype)]
                          for label in labels}))
            for name, shape, flops, seconds in rows:
                rate = {label: flops / seconds[label] / 1e9 for label in labels}
                lines.append(f"| {name} | {shape} | {dtype} | "
                             + " | ".join(f"{rate[label]:.0f}" for label in labels) + " | "
                             + " | ".join(f"{rate[a] / rate[b]:.2f}×" for a, b in pairs) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        import json

        return bench.serve(*matmul_worker(json.loads(args.worker)))
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    results = measure(args)
    import jax
    import torch

    header = (f"`python tools/bench_matmul.py --models {' '.join(args.models)} --rounds "
              f"{args.rounds} --repeats {args.repeats}`, {started:%Y-%m-%d %H:%M} UTC; "
              f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}, torch "
              f"{torch.__version__}, Python {platform.python_version()}; load average "
              f"{load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end. Shapes: "
              "[B, T, K, N] for activations [B, T, K] by a kernel [K, N]; [B, T, heads, "
              "head dim] for the attention.")
    text = header + "\n" + markdown(args, results)
    print(text)
    if args.write:
        bench.write_benchmarks("bench_matmul.py", text)


if __name__ == "__main__":
    main()
