"""Training-step throughput, MFU and a PyTorch comparison, measured side by side.

Every contestant (the rmc_jax train step under some XLA flags / allocator environment, or the
PyTorch reference ``tools/torch_reference.py`` in some precision) runs in its own worker
process, built and compiled once. The parent then asks the workers, one at a time, to run
``--steps`` training steps, in rounds, rotating the order each round (A B C, B C A, ...), so
that the load of this shared machine drifts over all contestants alike; only one worker
computes at any moment. It reports per contestant the median examples/s over rounds, and per
round the ratio of each contestant to the first one of its group (min / median / max).

    python tools/bench.py                       # base config: global + roi, JAX vs PyTorch
    python tools/bench.py --groups flags        # XLA flags / allocator settings, JAX only
    python tools/bench.py --groups flags --xla_flags "xla_cpu_use_xnnpack=false"
    python tools/bench.py --groups threads      # thread counts / OpenMP wait policy
    python tools/bench.py --groups patches      # model-code variants (attention layout)
    python tools/bench.py --groups vits vits-roi --rounds 3 --steps 1
    python tools/bench.py --groups eval         # images/s and texts/s embedded
    python tools/bench.py --groups teacher      # roi with the head vs the crop teacher
    python tools/bench.py --groups stem         # roi with the patchify vs convolutional stems
    python tools/bench.py --groups sentence     # roi with and without the sentence term
    python tools/bench.py --groups accelerator  # GPU / TPU: bf16 and f32, base, ViT-S/16 and
                                                # ViT-B/16 + BERT-base (configs/b16.py), with
                                                # the backend's kernels and with the CPU's
                                                # (experiments/device_check.sh)
    python tools/bench.py --write               # also replace the groups' tables in
                                                # BENCHMARKS.md (between their markers)

FLOPs per step come from XLA's cost analysis of the lowered step, cross-checked by an
analytic count of the matmuls (``analytic_flops``). MFU divides FLOPs/step x steps/s by the
best FLOP/s of a large f32 (and bf16) matmul measured by ``rmc_jax.flops.measure_matmul_peak``
in the same run, and on a known accelerator also by the vendor's dense bf16 peak
(``rmc_jax.flops.vendor_peak``). Memory: the device's peak bytes in use after the timed steps
where the backend reports it (GPU, TPU), and the compiled step's own figure (arguments +
outputs - donated + temporaries, ``memory_analysis``) everywhere. The step never reads the
input pipeline: a fixed random batch with the shapes, masks and region counts of the
pipeline's batches (``tools/bench_data.py`` measures the pipeline).

Workers are ordinary processes of this file (``--worker SPEC``) talking JSON over stdin/out;
each sets ``torch.set_num_threads`` to the number of cores XLA uses (all of them).

One file of about 800 lines on purpose: it is run by path and starts its own workers as
processes of this same file, so the parent (rounds, tables), the worker protocol and the
contestant groups it builds stay together; ``tools/`` is scripts, not a package to split into.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, ROOT)

# Allocator settings compared by the 'flags' group. glibc: keep freed memory in the heap
# (no trimming, large buffers from the heap rather than fresh mmap'd pages that fault on
# first touch). jemalloc: used only if a shared library is found.
GLIBC_TUNED = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296",
               "MALLOC_TOP_PAD_": "268435456"}
ALLOCATOR_LIBRARIES = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                       "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                       "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4")

MODELS = {
    # configs/base.py defaults: ViT 192 x 4 (3 heads), patch 16 at 128 px; text 192 x 4.
    "base": {},
    # ViT-S/16 at 224 px, with a text tower of the same size.
    "vits": {"width": 384, "depth": 12, "num_heads": 6, "image_size": 224},
    # configs/b16.py as it is: ViT-B/16 at 224 px + BERT-base (BiomedCLIP's shapes).
    "b16": {"config": "b16"},
}
MODEL_DESCRIPTIONS = {"base": "ViT 192x4, patch 16, 128 px; text 192x4",
                      "vits": "ViT-S/16 (384x12, 6 heads), 224 px; text 384x12",
                      "b16": "ViT-B/16 (768x12, 12 heads), 224 px; BERT-base (768x12)"}


def config_file(model: str) -> str:
    """The configs/ file a bench model is built from."""
    return f"configs/{MODELS[model].get('config', 'base')}.py"


# =============================================================================================
# Analytic FLOP count
# =============================================================================================


def _layer_flops(tokens: int, width: int, mlp: int) -> float:
    """Forward FLOPs (2 x multiply-adds) of one transformer block on one sequence."""
    projections = 2 * tokens * (3 * width * width + width * width + 2 * width * mlp)
    attention = 2 * 2 * tokens * tokens * width  # QK^T and AV
    return projections + attention


def _tower_flops(tokens: int, width: int, depth: int, mlp_ratio: float) -> float:
    return depth * _layer_flops(tokens, width, int(width * mlp_ratio))


def _stem_flops(v, size: int) -> float:
    """The stem's FLOPs for one size x size image: the patchify matmul, or the convolutions of
    ``vit.ConvStem`` (patchify of the rest, stride-2 3x3 layers, the 1x1 projection)."""
    patches = (size // v.patch_size) ** 2
    if v.stem == "patch":
        return 2 * patches * v.patch_size ** 2 * v.channels * v.width
    from rmc_jax.models.vit import ConvStem

    convs = v.conv_stem_layers
    channels = ConvStem.channels(v.width, convs)        # out of the patchify, then each layer
    first, flops = v.patch_size >> convs, 0.0
    side, inputs = size, v.channels
    if first > 1:
        side //= first
        flops += 2 * side * side * first * first * inputs * channels[0]
        inputs = channels[0]
    for i in range(convs):
        side //= 2
        flops += 2 * side * side * 9 * inputs * channels[i + 1]
        inputs = channels[i + 1]
    return flops + 2 * patches * inputs * v.width


def analytic_flops(config, batch_size: int) -> float:
    """Matmul FLOPs of one training step (forward x 3 for the trained parts, x 1 for the
    no-gradient teacher), from the config's shapes. Element-wise work and the losses'
    [B, B] logits are left out (a few percent at these sizes)."""
    v, t, m, d = config.model.vision, config.model.text, config.model, config.data
    b = batch_size
    patches = (v.image_size // v.patch_size) ** 2
    image = (_stem_flops(v, v.image_size)
             + _tower_flops(patches + 1, v.width, v.depth, v.mlp_ratio)
             + 2 * v.width * m.embed_dim)

    def text(length):
        return _tower_flops(length, t.width, t.depth, t.mlp_ratio) + 2 * t.width * m.embed_dim

    trained = b * (image + text(d.max_text_len))
    if config.loss.sentence_weight > 0:
        trained += b * d.sentences_per_report * text(d.max_sentence_len)
    teacher = 0.0
    if config.loss.roi_weight > 0 or config.loss.neg_weight > 0:
        slots = math.ceil(b * d.max_regions * config.loss.caption_fraction)
        trained += slots * (1 + d.num_negatives) * text(d.max_caption_len)
        trained += b * d.max_regions * (2 * v.width * v.width + 2 * v.width * m.embed_dim)
    if config.loss.distill_weight > 0:
        from rmc_jax import objective

        concepts = 24
        trained += concepts * text(d.max_caption_len)
        if objective.teacher_regions(config) == "head":  # the image tower once per image
            teacher = b * (image + d.max_regions * (2 * v.width * v.width
                                                    + 2 * v.width * m.embed_dim))
        else:                                           # once per region crop
            crop_patches = (config.teacher.crop_size // v.patch_size) ** 2
            teacher = b * d.max_regions * (
                _stem_flops(v, config.teacher.crop_size)
                + _tower_flops(crop_patches + 1, v.width, v.depth, v.mlp_ratio)
                + 2 * v.width * m.embed_dim)
        teacher += concepts * text(d.max_caption_len)
    return 3 * trained + teacher


# =============================================================================================
# Workers
# =============================================================================================


def bench_config(variant: str, model: str, dtype: str, batch_size: int,
                 text_len: int | None = None):
    """configs/base.py:<variant> (configs/b16.py:<variant> for 'b16') with the model size,
    compute dtype and (if given) report tokens of a contestant."""
    if MODELS[model].get("config") == "b16":
        from configs.b16 import get_config
    else:
        from configs.base import get_config

    size = MODELS[model]
    arg = variant + (f",res={size['image_size']}" if "image_size" in size else "")
    config = get_config(arg)
    config.batch_size = batch_size
    for tower in (config.model.vision, config.model.text):
        for key in ("width", "depth", "num_heads"):
            if key in size:
                tower[key] = size[key]
        tower.dtype = dtype
    if text_len:
        config.data.max_text_len = text_len
    return config


def batch_label_names() -> tuple[str, ...]:
    """The classes of ``random_batch``'s labels: the embedded data's (imported here, not at
    start-up, as every rmc_jax import of this file)."""
    from rmc_jax.data.synthetic.source import LABEL_NAMES

    return LABEL_NAMES


def random_batch(config, seed: int = 0) -> dict:
    """NumPy batch with the pipeline's keys and shapes; 1-3 real regions per image."""
    import numpy as np

    rng = np.random.default_rng(seed)
    d, b = config.data, config.batch_size
    r, k, s, ns = d.max_regions, d.num_negatives, d.image_size, d.sentences_per_report
    box_mask = np.arange(r)[None, :] < rng.integers(1, 4, b)[:, None]
    xy = rng.uniform(0, 0.6, (b, r, 2))
    wh = rng.uniform(0.1, 0.4, (b, r, 2))
    vocab = config.model.text.vocab_size
    classes = len(batch_label_names())
    ones = lambda *shape: np.ones(shape, np.int32)  # noqa: E731
    return {
        "image": rng.standard_normal((b, s, s, 1)).astype(np.float32),
        "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
        "box_mask": box_mask,
        "text_ids": rng.integers(5, vocab, (b, d.max_text_len)).astype(np.int32),
        "text_mask": ones(b, d.max_text_len),
        "caption_ids": rng.integers(5, vocab, (b, r, d.max_caption_len)).astype(np.int32),
        "caption_mask": ones(b, r, d.max_caption_len),
        "neg_ids": rng.integers(5, vocab, (b, r, k, d.max_caption_len)).astype(np.int32),
        "neg_mask": ones(b, r, k, d.max_caption_len),
        "neg_valid": np.broadcast_to(box_mask[..., None], (b, r, k)).copy(),
        "caption_hash": rng.integers(0, 2**30, (b, r)).astype(np.int32),
        "sentence_ids": rng.integers(5, vocab, (b, ns, d.max_sentence_len)).astype(np.int32),
        "sentence_mask": ones(b, ns, d.max_sentence_len),
        # Ids from a small pool, so that reports share sentences as real ones do.
        "sentence_hash": rng.integers(0, 40, (b, ns)).astype(np.int32),
        "report_sentence_hash": rng.integers(-1, 40, (b, d.max_report_sentences)).astype(
            np.int32),
        "labels": rng.integers(0, 2, (b, classes)).astype(np.float32),
        "label_mask": np.ones((b, classes), bool),
        "has_report": np.ones((b,), bool),
    }


def _bnth_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                    **unused):
    """Softmax attention computed in the [B, N, T, H] layout with batched matmuls (same
    result as ``jax.nn.dot_product_attention``'s XLA path, whose einsums over [B, T, N, H]
    compile to slower transposes and dots on the CPU backend)."""
    import jax
    import jax.numpy as jnp

    if bias is not None or unused.get("query_seq_lengths") is not None:
        raise NotImplementedError("bench patch: bias / sequence lengths not supported")
    h = query.shape[-1]
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))          # [B, N, T, H]
    logits = (q * jnp.asarray(scale or h ** -0.5, q.dtype)) @ jnp.swapaxes(k, -1, -2)
    logits = logits.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    if is_causal:
        t, s = logits.shape[-2:]
        logits = jnp.where(jnp.tril(jnp.ones((t, s), bool)), logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.swapaxes(probs @ v, 1, 2)


def apply_patches(names):
    """Experimental model-code changes measured by the 'patched' contestants (this worker
    process only): 'bnth_attention' (attention layout). (The erf form of the exact GELU,
    measured here first, is now the library's own: ``layers.exact_gelu``.)"""
    import jax

    if "bnth_attention" in names:
        jax.nn.dot_product_attention = _bnth_attention


def jax_worker(spec: dict):
    """Build and compile the rmc_jax train step; return (run(n) -> seconds per step, info)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    apply_patches(spec.get("patches", ()))

    from rmc_jax import flops
    from rmc_jax import sharding as shd
    from rmc_jax import train as trainer
    from rmc_jax.models import layers

    config = bench_config(spec["variant"], spec["model"], spec["dtype"], spec["batch"],
                          spec.get("text_len"))
    if spec.get("teacher_regions"):
        config.teacher.regions = spec["teacher_regions"]
    if spec.get("stem"):
        config.model.vision.stem, config.model.vision.stem_convs = spec["stem"]
    if spec.get("no_sentence"):
        config.loss.sentence_weight, config.data.sentences_per_report = 0.0, 0
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
    model = trainer.build_model(config.model)
    tx, schedule = trainer.make_optimizer(config)
    # "kernels": trace the model with another platform's kernels (the CPU's custom-VJP ones
    # on a GPU, to compare them with the GPU's own); default: this backend's.
    platform = spec.get("kernels") or layers.kernel_platform()
    with layers.kernels_for(platform):
        state, state_sharding = trainer.init_state(model, tx, config, mesh)
        step = trainer.make_train_step(model, tx, schedule, config, mesh, state_sharding,
                                       label_names=batch_label_names())
        batch = shd.global_batch(random_batch(config), mesh)
        rng = np.random.default_rng(1)
        concepts = (jnp.asarray(rng.integers(5, config.model.text.vocab_size,
                                             (24, config.data.max_caption_len)), jnp.int32),
                    jnp.ones((24, config.data.max_caption_len), jnp.int32))
        start = time.perf_counter()
        lowered = step.lower(state, batch, concepts, None)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run(n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            holder["state"], metrics = compiled(holder["state"], batch, concepts, None)
            jax.block_until_ready((holder["state"], metrics))
            times.append(time.perf_counter() - t0)
        return times, float(metrics["loss"]) if "loss" in metrics else None

    def run_and_measure(n):
        times, loss = run(n)
        return times, {"loss": loss, "peak_bytes": device_peak_bytes()}

    run(2)  # first calls: allocation, page faults
    info = {"compile_s": compile_s,
            "xla_flops": flops.cost_flops(lowered) or 0.0,
            "analytic_flops": analytic_flops(config, config.batch_size),
            "parameters": int(sum(x.size for x in jax.tree.leaves(state["params"]))),
            "compiled_bytes": compiled_bytes(compiled),
            "kernels": platform,
            "threads": os.cpu_count()}
    return run_and_measure, info


def compiled_bytes(compiled) -> int | None:
    """Device memory a compiled step needs by XLA's own account: arguments + outputs - donated
    (aliased) buffers + temporaries; None where the backend has no memory analysis."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the first device since the process started (GPU, TPU), or None
    where the backend does not report it (CPU)."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        return None
    peak = stats.get("peak_bytes_in_use")
    return int(peak) if peak else None


def embed_worker(spec: dict):
    """Evaluation throughput: the jitted ``encode_image`` ([B, S, S, 1] images) or
    ``encode_text`` ([B, max_text_len] report tokens) of the model; one call embeds B items."""
    import jax
    import jax.numpy as jnp

    from rmc_jax.models import RegionCLIP, build_model, init_params

    config = bench_config("global", spec["model"], spec["dtype"], spec["batch"])
    model = build_model(config.model)
    params = init_params(model, jax.random.key(0))
    batch = random_batch(config)
    if spec["what"] == "image":
        inputs = (jnp.asarray(batch["image"]),)
        method = RegionCLIP.encode_image
    else:
        inputs = (jnp.asarray(batch["text_ids"]), jnp.asarray(batch["text_mask"]))
        method = RegionCLIP.encode_text
    encode = jax.jit(lambda p, *x: model.apply({"params": p}, *x, method=method))
    start = time.perf_counter()
    jax.block_until_ready(encode(params, *inputs))

    def run(n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(encode(params, *inputs))
            times.append(time.perf_counter() - t0)
        return times, None

    run(2)
    return run, {"compile_s": time.perf_counter() - start}


def torch_worker(spec: dict):
    """Build the PyTorch reference step; return (run(n) -> seconds per step, info)."""
    import torch

    from tools import torch_reference as ref

    torch.set_num_threads(spec.get("threads") or os.cpu_count())
    size = MODELS[spec["model"]]
    dims = ref.Dims(
        image_size=size.get("image_size", 128),
        **{k: size[k] for k in ("width", "depth", "num_heads") if k in size},
        **{f"text_{k}": size[k] for k in ("width", "depth") if k in size},
        **({"text_heads": size["num_heads"]} if "num_heads" in size else {}))
    start = time.perf_counter()
    step, info = ref.make_step(spec["batch"], variant=spec["variant"],
                               precision=spec["dtype"], compile=spec.get("compile", False),
                               dims=dims)

    def run(n):
        times, loss = [], None
        for _ in range(n):
            t0 = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - t0)
        return times, loss

    run(2)  # includes torch.compile's compilation when enabled
    info.pop("dims", None)
    info.update(compile_s=time.perf_counter() - start, threads=torch.get_num_threads())
    return run, info


def matmul_worker(spec: dict):
    """Best f32 / bf16 matmul FLOP/s of XLA on this host (run() re-measures)."""
    import jax.numpy as jnp

    from rmc_jax import flops

    def run(n):
        peaks = {name: flops.measure_matmul_peak(dtype, size=spec.get("size", 2048),
                                                 repeats=max(3, n))
                 for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16))}
        return [0.0], peaks

    return run, {}


def worker_main(spec: dict):
    import warnings

    warnings.filterwarnings("ignore")
    build = {"jax": jax_worker, "torch": torch_worker, "matmul": matmul_worker,
             "embed": embed_worker}[spec["engine"]]
    serve(*build(spec))


def serve(run, info: dict):
    """A worker's side of the protocol: READY once, then one DONE per ``run N`` line."""
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        times, extra = run(int(command[1]))
        print("DONE " + json.dumps({"times": times, "extra": extra}), flush=True)


class Worker:
    """One contestant in its own process (env applied before JAX / PyTorch start): ``script``
    run with ``--worker SPEC`` (this file by default), whose worker prints ``READY info`` once
    built and ``DONE {"times", "extra"}`` after each ``run N`` on its stdin."""

    def __init__(self, label: str, spec: dict, env: dict | None = None,
                 script: str = os.path.abspath(__file__), wait: bool = True):
        self.label, self.spec, self.env = label, spec, env or {}
        full_env = dict(os.environ)
        for key, value in self.env.items():
            if key == "XLA_FLAGS":
                value = (full_env.get("XLA_FLAGS", "") + " " + value).strip()
            full_env[key] = value
        # "cpus": run the worker under taskset (e.g. "0": one core, so XLA's thread pool,
        # sized from the affinity mask, has one thread).
        prefix = ["taskset", "-c", spec["cpus"]] if spec.get("cpus") else []
        self.process = subprocess.Popen(
            prefix + [sys.executable, script, "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=full_env, cwd=ROOT)
        self.info = None
        self.rates: list[float] = []
        self.extra = None
        if wait:
            self.ready()

    def ready(self) -> dict:
        """Wait until the worker is built (``wait=False`` starts it without waiting, so that
        several contestants compile at once)."""
        if self.info is None:
            self.info = self._expect("READY")
        return self.info

    def _expect(self, tag: str):
        for line in self.process.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
        raise RuntimeError(f"worker {self.label!r} exited ({self.process.wait()}) "
                           f"before {tag}")

    def run(self, steps: int) -> float:
        self.process.stdin.write(f"run {steps}\n")
        self.process.stdin.flush()
        out = self._expect("DONE")
        self.extra = out["extra"]
        return statistics.median(out["times"])

    def close(self):
        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)
        except Exception:  # already gone
            self.process.kill()


# =============================================================================================
# Groups of contestants
# =============================================================================================


def _jax(variant, model="base", dtype="float32", batch=32, patches=()):
    return {"engine": "jax", "variant": variant, "model": model, "dtype": dtype, "batch": batch,
            "patches": list(patches)}


PATCHES = ("bnth_attention",)


def _torch(variant, model="base", dtype="float32", batch=32, compile=False, threads=0):
    return {"engine": "torch", "variant": variant, "model": model, "dtype": dtype,
            "batch": batch, "compile": compile, "threads": threads}


def allocator_library() -> str | None:
    for path in ALLOCATOR_LIBRARIES + tuple(filter(None, [os.environ.get("BENCH_PRELOAD")])):
        if os.path.exists(path):
            return path
    return None


def groups(args) -> dict[str, list[tuple[str, dict, dict]]]:
    """name -> [(label, worker spec, environment)]; the first entry is the ratios' base."""
    tuned = dict(GLIBC_TUNED)
    out = {}
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    for variant in ("global", "roi"):
        rows = [("rmc_jax f32", _jax(variant), {}),
                ("rmc_jax f32, glibc malloc tuned", _jax(variant), tuned),
                ("rmc_jax bf16", _jax(variant, dtype="bfloat16"), {}),
                ("PyTorch f32 eager, 2 threads", _torch(variant), {}),
                ("PyTorch f32 eager, 2 threads, OMP_WAIT_POLICY=PASSIVE", _torch(variant),
                 passive),
                ("PyTorch f32 eager, 1 thread", _torch(variant, threads=1), {}),
                ("PyTorch bf16 autocast eager, 1 thread",
                 _torch(variant, dtype="bfloat16", threads=1), {}),
                ("PyTorch bf16 autocast eager, 2 threads, OMP_WAIT_POLICY=PASSIVE",
                 _torch(variant, dtype="bfloat16"), passive)]
        if args.torch_compile:
            rows.append(("PyTorch f32 torch.compile, 1 thread",
                         _torch(variant, compile=True, threads=1), {}))
        out[f"base-{variant}"] = rows
    for name, variant in (("vits", "global"), ("vits-roi", "roi")):
        out[name] = [("rmc_jax f32", _jax(variant, "vits"), {}),
                     ("rmc_jax bf16", _jax(variant, "vits", "bfloat16"), {}),
                     ("PyTorch f32 eager, 1 thread", _torch(variant, "vits", threads=1), {}),
                     ("PyTorch f32 eager, 2 threads, OMP_WAIT_POLICY=PASSIVE",
                      _torch(variant, "vits"), passive),
                     ("PyTorch bf16 autocast eager, 1 thread",
                      _torch(variant, "vits", "bfloat16", threads=1), {}),
                     ("PyTorch bf16 autocast eager, 2 threads, OMP_WAIT_POLICY=PASSIVE",
                      _torch(variant, "vits", "bfloat16"), passive)]
    flags = [("default", {}),
             ("glibc malloc tuned", tuned),
             ("--xla_cpu_use_xnnpack=true", {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}),
             ("--xla_cpu_experimental_xnn_fusion_type=dot",
              {"XLA_FLAGS": "--xla_cpu_experimental_xnn_fusion_type=dot"}),
             ("--xla_cpu_experimental_onednn_fusion_type=dot",
              {"XLA_FLAGS": "--xla_cpu_experimental_onednn_fusion_type=dot"}),
             ("--xla_cpu_multi_thread_eigen=false",
              {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"})]
    if args.xla_flags:  # explicit sets replace the default list
        sets = [" ".join("--" + f.lstrip("-") for f in flag_set.split())
                for flag_set in args.xla_flags]
        flags = [("default", {})] + [(f, {"XLA_FLAGS": f}) for f in sets]
    library = allocator_library()
    if library and not args.xla_flags:
        flags.append((f"LD_PRELOAD={os.path.basename(library)}", {"LD_PRELOAD": library}))
    out["flags"] = [(f"rmc_jax f32, {name}", _jax(args.flags_variant), env)
                    for name, env in flags]
    # GPU / TPU (experiments/device_check.sh): JAX only, batches sized for an accelerator.
    b, tokens = args.accelerator_batch, args.b16_text_len

    def b16(variant, **extra):
        return dict(_jax(variant, "b16", "bfloat16", args.b16_batch), text_len=tokens, **extra)

    out["accelerator"] = [(f"rmc_jax bf16, B/16 roi, {tokens} tokens", b16("roi"), {}),
                          (f"rmc_jax bf16, B/16 global, {tokens} tokens", b16("global"), {}),
                          (f"rmc_jax bf16, B/16 roi, {tokens} tokens, CPU kernels",
                           b16("roi", kernels="cpu"), {}),
                          ("rmc_jax bf16, base roi", _jax("roi", dtype="bfloat16", batch=b), {}),
                          ("rmc_jax f32, base roi", _jax("roi", batch=b), {}),
                          ("rmc_jax bf16, base global",
                           _jax("global", dtype="bfloat16", batch=b), {}),
                          ("rmc_jax bf16, ViT-S/16 roi",
                           _jax("roi", "vits", "bfloat16", batch=max(1, b // 4)), {}),
                          ("rmc_jax bf16, ViT-S/16 global",
                           _jax("global", "vits", "bfloat16", batch=max(1, b // 4)), {})]
    out["eval"] = [(f"rmc_jax {what}s embedded, {model}",
                    {"engine": "embed", "what": what, "model": model, "dtype": "float32",
                     "batch": 32, "variant": "global"}, {})
                   for model in ("base", "vits") for what in ("image", "text")]
    one_core = dict(_jax(args.flags_variant), cpus="0")
    out["threads"] = [("rmc_jax f32", _jax(args.flags_variant), {}),
                      ("rmc_jax f32, taskset -c 0 (1 thread)", one_core, {}),
                      ("rmc_jax f32, --xla_cpu_multi_thread_eigen=false", _jax(args.flags_variant),
                       {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}),
                      ("PyTorch f32 eager, 1 thread", _torch(args.flags_variant, threads=1), {}),
                      ("PyTorch f32 eager, 2 threads, OMP_WAIT_POLICY=PASSIVE",
                       _torch(args.flags_variant), {"OMP_WAIT_POLICY": "PASSIVE"})]
    # The distillation teacher scoring regions with its region head (the default for the EMA
    # teacher) or with the image tower on 64 px crops (RegionCLIP's way).
    out["teacher"] = [(f"rmc_jax bf16, roi, {regions} teacher",
                       dict(_jax("roi", dtype="bfloat16"), teacher_regions=regions), {})
                      for regions in ("head", "crop")]
    # The sentence term (two report sentences per example against the batch's images), the
    # default of the roi variants, and the step without it.
    out["sentence"] = [("rmc_jax bf16, roi", _jax("roi", dtype="bfloat16"), {}),
                       ("rmc_jax bf16, roi without the sentence term",
                        dict(_jax("roi", dtype="bfloat16"), no_sentence=True), {})]
    # The image tower's stem: ViT's patchify, or convolutions (model.vision.stem='conv') with
    # 1, 2 or all log2(16) = 4 stride-2 3x3 layers after a patchify of the rest.
    out["stem"] = [("rmc_jax bf16, roi, patchify stem",
                    dict(_jax("roi", dtype="bfloat16"), stem=("patch", 0)), {})] + [
        (f"rmc_jax bf16, roi, conv stem, {n} 3x3 layers",
         dict(_jax("roi", dtype="bfloat16"), stem=("conv", n)), {}) for n in (1, 2, 4)]
    out["patches"] = [("rmc_jax f32", _jax(args.flags_variant), {}),
                      ("rmc_jax f32, [B,N,T,H] attention",
                       _jax(args.flags_variant, patches=PATCHES), {}),
                      ("PyTorch f32 eager, 1 thread", _torch(args.flags_variant, threads=1), {})]
    return out


# =============================================================================================
# Main
# =============================================================================================


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--groups", nargs="+", default=["base-global", "base-roi"],
                        help="base-global, base-roi, vits, vits-roi, flags, threads, patches, "
                             "eval, teacher, stem, accelerator")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per contestant per round")
    parser.add_argument("--only", nargs="*", default=None,
                        help="keep contestants whose label contains one of these strings")
    parser.add_argument("--flags_variant", default="global")
    parser.add_argument("--xla_flags", nargs="*", default=None,
                        help="'flags' group: compare these XLA flag sets with the default; each a "
                             "space-separated string of flags written without their leading "
                             "'--' (e.g. 'xla_cpu_use_xnnpack=false')")
    parser.add_argument("--torch_compile", action="store_true",
                        help="add torch.compile contestants (minutes of compilation)")
    parser.add_argument("--accelerator_batch", type=int, default=256,
                        help="'accelerator' group: batch of the base config (ViT-S: a quarter)")
    parser.add_argument("--parallel_build", action="store_true",
                        help="start and compile every contestant of a group at once (an "
                             "accelerator host's cores compile them side by side), then time "
                             "them one at a time as usual")
    parser.add_argument("--b16_batch", type=int, default=256,
                        help="'accelerator' group: batch of the ViT-B/16 + BERT-base rows")
    parser.add_argument("--b16_text_len", type=int, default=64,
                        help="'accelerator' group: report tokens of the B/16 rows (64: the "
                             "published per-pair FLOP anchor; configs/b16.py reads 256)")
    parser.add_argument("--matmul_size", type=int, default=0,
                        help="side of the peak-FLOP/s matmul (default 2048 on CPU, 8192 on an "
                             "accelerator)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--output", help="also write the raw results here (JSON)")
    return parser.parse_args(argv)


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def run_group(name, rows, args, peaks):
    workers = []
    try:
        # --parallel_build: every contestant starts (and compiles) at once, then all are
        # awaited; the timed rounds below run one contestant at a time either way.
        started = time.perf_counter()
        for label, spec, env in rows:
            if args.only and not any(s in label for s in args.only):
                continue
            if not args.parallel_build:
                started = time.perf_counter()
            workers.append(Worker(label, spec, env, wait=not args.parallel_build))
            if not args.parallel_build:
                print(f"  [{name}] ready: {label} ({time.perf_counter() - started:.0f} s)",
                      file=sys.stderr, flush=True)
        for w in workers:
            if args.parallel_build:
                w.ready()
                print(f"  [{name}] ready: {w.label} (compiled in {w.info.get('compile_s', 0):.0f}"
                      f" s; {time.perf_counter() - started:.0f} s since the start)",
                      file=sys.stderr, flush=True)
        ratios = {w.label: [] for w in workers[1:]}
        for round_index in range(args.rounds):
            shift = round_index % len(workers)
            seconds = {}
            for w in workers[shift:] + workers[:shift]:
                seconds[w.label] = w.run(args.steps)
                w.rates.append(w.spec["batch"] / seconds[w.label])
            base = workers[0]
            for w in workers[1:]:
                ratios[w.label].append(w.rates[-1] / base.rates[-1])
            print(f"  [{name}] round {round_index + 1}: " + ", ".join(
                f"{w.label} {w.rates[-1]:.1f}" for w in workers), file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()
    results = []
    for w in workers:
        rate = statistics.median(w.rates)
        xla, analytic = w.info.get("xla_flops"), w.info.get("analytic_flops")
        flops = xla or (0.0 if w.spec["engine"] == "embed" else analytic_flops(
            bench_config(w.spec["variant"], w.spec["model"], w.spec["dtype"], w.spec["batch"],
                         w.spec.get("text_len")),
            w.spec["batch"]))
        steps_per_s = rate / w.spec["batch"]
        results.append({
            "label": w.label, "spec": w.spec, "env": w.env, "rates": w.rates,
            "median": rate, "ratio": ratios.get(w.label), "info": w.info,
            "flops": flops, "analytic_flops": analytic,
            "mfu_f32": flops * steps_per_s / peaks["float32"] if peaks else None,
            "mfu_bf16": flops * steps_per_s / peaks["bfloat16"] if peaks else None,
            "gflops_per_s": flops * steps_per_s / 1e9,
            "peak_bytes": (w.extra or {}).get("peak_bytes") if isinstance(w.extra, dict)
            else None})
    return results


def markdown(name, results, args, vendor_peak: float | None = None) -> str:
    """The group's table. One model and batch: named in the heading; several: a column each.
    With ``vendor_peak`` (a known accelerator) an MFU column against it; with memory figures
    (see ``compiled_bytes`` / ``device_peak_bytes``) a memory column."""
    spec = results[0]["spec"]
    same = len({(r["spec"]["model"], r["spec"]["variant"], r["spec"]["batch"])
                for r in results}) == 1
    what = (f"`{config_file(spec['model'])}:{spec['variant']}`, "
            f"{MODEL_DESCRIPTIONS[spec['model']]}, batch {spec['batch']}" if same else
            "; ".join(f"{m}: `{config_file(m)}`, {MODEL_DESCRIPTIONS[m]}"
                      for m in dict.fromkeys(r["spec"]["model"] for r in results)))
    memory = any(r["info"].get("compiled_bytes") or r.get("peak_bytes") for r in results)
    columns = ["contestant"] + ([] if same else ["batch"]) + [
        "ex/s median (min–max)", "ratio per round min / median / max",
        "GFLOP/step (XLA / analytic)", "GFLOP/s", "MFU vs f32 peak", "MFU vs bf16 peak"]
    columns += ["MFU vs vendor bf16 peak"] if vendor_peak else []
    columns += ["memory: device peak / compiled step"] if memory else []
    # Accelerator rows: what a short run spends compiling (all rows at once with
    # --parallel_build, so each takes longer than alone).
    compile_s = name == "accelerator" and any(r["info"].get("compile_s") for r in results)
    columns += ["compile"] if compile_s else []
    lines = [f"**{name}** — {what}; {args.rounds} rounds x {args.steps} steps, ratios "
             f"against \"{results[0]['label']}\" in the same round.", "",
             "| " + " | ".join(columns) + " |",
             "|---|" + "---:|" * (len(columns) - 1)]
    for r in results:
        ratio = ("1 (base)" if r["ratio"] is None else
                 f"{min(r['ratio']):.2f} / {statistics.median(r['ratio']):.2f} / "
                 f"{max(r['ratio']):.2f}")
        rate = f"{r['median']:.1f} ({min(r['rates']):.1f}–{max(r['rates']):.1f})"
        cells = [r["label"]] + ([] if same else [str(r["spec"]["batch"])]) + [rate, ratio]
        if r["spec"]["engine"] == "embed":  # items embedded per second; no FLOP count
            cells += ["–"] * (len(columns) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        xla = r["info"].get("xla_flops")
        cells += [f"{xla / 1e9:.1f} / {r['analytic_flops'] / 1e9:.1f}" if xla else
                  f"– / {r['flops'] / 1e9:.1f}", f"{r['gflops_per_s']:.0f}",
                  f"{_fmt(r['mfu_f32'] and 100 * r['mfu_f32'], '.0f')}%",
                  f"{_fmt(r['mfu_bf16'] and 100 * r['mfu_bf16'], '.0f')}%"]
        if vendor_peak:
            cells.append(f"{100 * r['gflops_per_s'] * 1e9 / vendor_peak:.1f}%")
        if memory:
            cells.append(f"{memory_size(r.get('peak_bytes'))} / "
                         f"{memory_size(r['info'].get('compiled_bytes'))}")
        if compile_s:
            cells.append(f"{r['info'].get('compile_s', 0):.0f} s")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def memory_size(n) -> str:
    """Bytes for a table: '12.3 GiB', '45 MiB', '–' when unknown."""
    if not n:
        return "–"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    table = groups(args)
    unknown = set(args.groups) - set(table)
    if unknown:
        raise SystemExit(f"unknown groups {sorted(unknown)}; choose from {sorted(table)}")
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    peak_worker = Worker("matmul", {"engine": "matmul", "size": args.matmul_size or
                                    (8192 if "accelerator" in args.groups else 2048)})
    peaks = {k: 0.0 for k in ("float32", "bfloat16")}

    def measure_peaks():
        peak_worker.run(5)
        for key, value in peak_worker.extra.items():
            peaks[key] = max(peaks[key], value)

    measure_peaks()
    print(f"matmul peak: f32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s", file=sys.stderr, flush=True)
    all_results = {}
    for name in args.groups:
        all_results[name] = run_group(name, table[name], args, None)
    measure_peaks()  # again at the end: the best of both is the machine's peak
    peak_worker.close()
    for results in all_results.values():
        for r in results:
            steps_per_s = r["median"] / r["spec"]["batch"]
            r["mfu_f32"] = r["flops"] * steps_per_s / peaks["float32"]
            r["mfu_bf16"] = r["flops"] * steps_per_s / peaks["bfloat16"]

    import jax

    try:
        import torch
        torch_version = f"torch {torch.__version__}"
    except ImportError:  # accelerator images without PyTorch: JAX-only groups still run
        torch_version = "no torch"
    device = jax.devices()[0]
    accelerator = "" if device.platform == "cpu" else (
        f"{jax.device_count()} x {device.device_kind} ({device.platform}), ")
    header = (f"`python tools/bench.py --groups {' '.join(args.groups)} --rounds {args.rounds} "
              f"--steps {args.steps}`, {started:%Y-%m-%d %H:%M} UTC; {accelerator}"
              f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}, "
              f"{torch_version}, Python {platform.python_version()}; "
              f"load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end. "
              f"Matmul peak (XLA, {peak_worker.spec['size']}², best of the run): f32 "
              f"{peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s.")
    from rmc_jax import flops as rmc_flops

    vendor = rmc_flops.vendor_peak(device)
    if vendor:
        header += f" Vendor dense bf16 peak: {vendor / 1e12:.0f} TFLOP/s per device."
    blocks = {name: header + "\n\n" + markdown(name, results, args, vendor)
              for name, results in all_results.items()}
    text = "\n".join(blocks.values())
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"peaks": peaks, "vendor_peak": vendor, "groups": all_results,
                   "header": header}, handle,
                      indent=1, default=str)
    if args.write:
        for name, block in blocks.items():
            write_benchmarks(f"bench.py {name}", block)


def write_benchmarks(key: str, text: str, path: str = os.path.join(ROOT, "BENCHMARKS.md")):
    """Replace the block ``key`` in BENCHMARKS.md (appended when its markers are absent)."""
    from tools.markdown_block import replace_block

    replace_block(path, key, text)


if __name__ == "__main__":
    main()
