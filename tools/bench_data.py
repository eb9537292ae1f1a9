"""Input pipeline throughput against the training step's consumption rate.

Measures examples/s of ``rmc_jax.data.pipeline.make_dataset`` + ``prefetch`` (training mode:
shuffle, crop, letterbox, intensity, tokenize, hard negatives, batch) for

  (a) the synthetic source at the base config (``configs/base.py:roi``: 128 px, batch 32);
  (b) JPEG files on disk: ``--jpeg_count`` 1024 px JPEGs in the MS-CXR layout (CSV + MIMIC-CXR-JPG
      ``files/p1X/...`` images + MIMIC-CXR report files), decoded and letterboxed to 224 px;
  (c) the same images as a prepared TFDS copy in ArrayRecord files (``tools/prepare_data.py``),
      full size, and
  (d) prepared with ``--max_size 256`` (shrunk once, offline, for 224 px training);

each with 0, 1 and 2 worker processes, and prints them beside the examples/s one training step
of the base config consumes (model, optimiser and jitted step from ``rmc_jax.train``, timed
after compiling). A pipeline keeps the accelerator busy when ratio = pipeline / step >= 2.

Then, per codec (``--codecs``: raw, png, jpeg), the same JPEGs prepared at the training
resolution (``prepare_data.py --image_size 224 --codec C``) and read on one core (the process
pinned to one CPU, no worker processes): bytes per example, decode-only examples/s
(``copy[i]``), and decode + augment + tokenize examples/s (the whole training pipeline:
flip, crop, letterbox, intensity, tokenize, hard negatives, batch), with JPEG's error against
the lossless copy.

    python tools/bench_data.py
    python tools/bench_data.py --workers 0 2 --repeats 5 --skip_step
    python tools/bench_data.py --codecs_only --repeats 5       # the per-codec table alone

Every figure is the median of ``--repeats`` timings of ``--batches`` batches after
``--warmup`` batches (worker start-up and first-call costs excluded). Prints Markdown.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

TARGET_RATIO = 2.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=8, help="batches per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="batches before timing")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--jpeg_count", type=int, default=256)
    parser.add_argument("--jpeg_size", type=int, default=1024)
    parser.add_argument("--jpeg_res", type=int, default=224, help="letterboxed size of (b)-(d)")
    parser.add_argument("--skip_step", action="store_true", help="no training-step timing")
    parser.add_argument("--skip_prepared", action="store_true", help="no rows (c), (d)")
    parser.add_argument("--codecs", nargs="*", default=["raw", "png", "jpeg"],
                        help="codecs of the per-core table (none: no table)")
    parser.add_argument("--codec_res", type=int, default=224,
                        help="training resolution of the per-codec copies")
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--codecs_only", action="store_true",
                        help="only the per-codec table (no step, no rows (a)-(d))")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Data on disk
# ---------------------------------------------------------------------------------------------


def write_jpeg_dataset(directory: str, count: int, size: int) -> tuple[str, str]:
    """``count`` MS-CXR examples with ``size`` px JPEGs and MIMIC-CXR report files.

    Images, captions, boxes and reports come from the synthetic source (rendered at 256 px,
    enlarged, with film-grain noise so the JPEGs carry realistic entropy). Returns
    (MS-CXR root, reports root).
    """
    from rmc_jax.data.schema import FINDINGS
    from rmc_jax.data.sources.ms_cxr import COLUMNS
    from rmc_jax.data.synthetic import SyntheticSource

    synthetic = SyntheticSource(split="train", size=10 * count, seed=1, image_size=256)
    root, reports = os.path.join(directory, "ms-cxr"), os.path.join(directory, "reports")
    noise = np.random.default_rng(0)
    rows, n = [], 0
    for index in range(len(synthetic)):
        if n == count:
            break
        example = synthetic[index]
        if not example.num_regions:
            continue  # MS-CXR holds annotated images only
        subject, study, dicom = f"1{n % 10}{n:06d}", f"5{n:07d}", f"bench{n:05d}"
        path = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
        pixels = np.asarray(Image.fromarray(example.image).resize((size, size), Image.BILINEAR),
                            np.float32) + noise.normal(0.0, 4.0, (size, size))
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(root, path), quality=90)
        report = os.path.join(reports, "files", f"p{subject[:2]}", f"p{subject}", f"s{study}.txt")
        os.makedirs(os.path.dirname(report), exist_ok=True)
        with open(report, "w", encoding="utf-8") as handle:
            handle.write("                                 FINAL REPORT\n " + example.report + "\n")
        for box, caption, finding in zip(example.boxes, example.captions, example.finding_ids):
            x0, y0, x1, y1 = (float(v) * size for v in box)
            category = FINDINGS[finding].replace("_", " ").title() if finding >= 0 else "Other"
            rows.append((dicom, category, caption, path, x0, y0, x1 - x0, y1 - y0, size, size,
                         "train"))
        n += 1
    with open(os.path.join(root, "MS_CXR_Local_Alignment_v1.1.0.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS + ("split",))
        writer.writerows(rows)
    return root, reports


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def pipeline_rate(source, pipeline_config, tokenizer, *, batch_size, workers, warmup, batches,
                  repeats, seed=0) -> list[float]:
    """Examples/s of the training pipeline over ``repeats`` timings of ``batches`` batches."""
    from rmc_jax.data import pipeline as pipe

    dataset = pipe.make_dataset(source, pipeline_config, tokenizer, batch_size=batch_size,
                                seed=seed, train=True)
    rates = []
    with pipe.closing(iter(pipe.prefetch(dataset, workers))) as iterator:
        for _ in range(warmup):
            next(iterator)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(batches):
                next(iterator)
            rates.append(batches * batch_size / (time.perf_counter() - start))
    return rates


def step_rate(config, source, tokenizer, steps: int) -> tuple[list[float], float]:
    """Examples/s of the base config's jitted training step (one batch, after compiling), and
    the compile time in seconds."""
    import jax

    from rmc_jax import sharding as shd
    from rmc_jax import train as trainer

    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
    step, state, batch, concepts = trainer.fixed_batch_step(config, mesh, source, tokenizer)
    start = time.perf_counter()
    compiled = step.lower(state, batch, concepts, None).compile()
    compile_seconds = time.perf_counter() - start
    state, metrics = compiled(state, batch, concepts, None)  # first run (allocation)
    jax.block_until_ready(metrics)
    rates = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, concepts, None)
        jax.block_until_ready((state, metrics))
        rates.append(config.batch_size / (time.perf_counter() - start))
    return rates, compile_seconds


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    import dataclasses
    import warnings

    import jax

    from configs.base import get_config
    from rmc_jax import train as trainer
    from rmc_jax.data import pipeline as pipe
    from rmc_jax.data.sources import get_source, open_source
    from rmc_jax.data.sources.ms_cxr import MSCXR
    from rmc_jax.data.tokenizer import train_wordpiece

    warnings.filterwarnings("ignore", category=UserWarning)
    config = get_config("roi")
    d = config.data
    synthetic = open_source(d.train, d.root, "train", d.train_size, config.seed, d.image_size)
    started = time.perf_counter()
    tokenizer = train_wordpiece(trainer.corpus(synthetic, limit=1000), d.vocab_size,
                                d.max_text_len)
    base = pipe.PipelineConfig.from_data_config(config.data)
    print(f"# Input pipeline vs training step ({platform.machine()}, {os.cpu_count()} CPU "
          f"cores, jax {jax.__version__} on {jax.default_backend()}, Python "
          f"{platform.python_version()}); load average at start "
          f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print(f"tokenizer: {tokenizer.vocab_size} tokens in {time.perf_counter() - started:.1f} s; "
          f"batch {config.batch_size}, {d.max_regions} regions, {d.num_negatives} negatives, "
          f"report {d.max_text_len} / caption {d.max_caption_len} tokens\n", flush=True)

    step = None
    if args.codecs_only:
        with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
            root, reports = write_jpeg_dataset(tmp, args.jpeg_count, args.jpeg_size)
            codec_table(args, root, reports, tmp, tokenizer, base, config)
        return
    if not args.skip_step:
        rates, compile_seconds = step_rate(config, synthetic, tokenizer, args.steps)
        step = statistics.median(rates)
        print(f"training step (configs/base.py:roi, {d.image_size} px, batch "
              f"{config.batch_size}): {step:.1f} examples/s median of {len(rates)} steps "
              f"({config.batch_size / step:.2f} s/step; range {min(rates):.1f}-"
              f"{max(rates):.1f}); compiled in {compile_seconds:.0f} s\n", flush=True)

    inputs = [("(a) synthetic, rendered on the fly", f"{d.image_size} px", synthetic, base)]
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        start = time.perf_counter()
        root, reports = write_jpeg_dataset(tmp, args.jpeg_count, args.jpeg_size)
        jpeg = MSCXR(root, "train", reports_root=reports)
        print(f"wrote {len(jpeg)} JPEGs of {args.jpeg_size} px (MS-CXR layout, "
              f"{_megabytes(root):.0f} MiB) in {time.perf_counter() - start:.0f} s\n", flush=True)
        at_res = dataclasses.replace(base, image_size=args.jpeg_res)
        label = f"{args.jpeg_size} -> {args.jpeg_res} px"
        inputs.append(("(b) JPEG files (MS-CXR layout)", label, jpeg, at_res))
        for name, max_size in ((() if args.skip_prepared else
                                (("(c) TFDS copy, full size", 0),
                                 ("(d) TFDS copy, --max_size 256", 256)))):
            out = os.path.join(tmp, "tfds")
            start = time.perf_counter()
            summary = _load_prepare().prepare(
                "ms_cxr", root, out, name=f"bench_{max_size}", splits=("train",), shards=4,
                max_size=max_size, options={"reports_root": reports}, log=lambda *_: None)
            copy = get_source(f"tfds:bench_{max_size}", out, "train")
            print(f"prepared {name[4:]} ({_megabytes(summary['path']):.0f} MiB) in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            size = f"{max_size or args.jpeg_size} -> {args.jpeg_res} px"
            inputs.append((name, size, copy, at_res))
        print()
        print("| input | image | workers | pipeline ex/s (median) | range | ratio to step |")
        print("|---|---|---:|---:|---:|---:|")
        for name, size, source, pipeline_config in inputs:
            for workers in args.workers:
                rates = pipeline_rate(source, pipeline_config, tokenizer,
                                      batch_size=config.batch_size, workers=workers,
                                      warmup=args.warmup, batches=args.batches,
                                      repeats=args.repeats, seed=config.seed)
                median = statistics.median(rates)
                ratio = (f"{median / step:.2f}x" + ("" if median / step >= TARGET_RATIO
                                                    else " (below 2x)")) if step else "-"
                print(f"| {name} | {size} | {workers} | {median:.1f} | {min(rates):.1f}-"
                      f"{max(rates):.1f} | {ratio} |", flush=True)
        if args.codecs:
            print()
            codec_table(args, root, reports, tmp, tokenizer, base, config)
    print(f"\nload average at end {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


def codec_table(args, root, reports, tmp, tokenizer, base, config):
    """Per codec: the MS-CXR JPEGs prepared at ``--codec_res`` and read on one pinned core."""
    import dataclasses

    from rmc_jax.data.sources import get_source
    from rmc_jax.data.sources.tfds_format import decode_image

    prepare = _load_prepare().prepare
    pipeline_config = dataclasses.replace(base, image_size=args.codec_res)
    copies, kib = {}, {}
    for codec in args.codecs:
        out = os.path.join(tmp, "tfds-codecs")
        start = time.perf_counter()
        summary = prepare("ms_cxr", root, out, name=f"bench_{codec}", splits=("train",),
                          shards=4, image_size=args.codec_res, codec=codec,
                          jpeg_quality=args.jpeg_quality, options={"reports_root": reports},
                          log=lambda *_: None)
        copies[codec] = get_source(f"tfds:bench_{codec}", out, "train")
        kib[codec] = sum(os.path.getsize(os.path.join(summary["path"], f))
                         for f in summary["shards"]["train"]) / len(copies[codec]) / 1024
        print(f"prepared {len(copies[codec])} examples at {args.codec_res} px as {codec} in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    fidelity = {}
    if "jpeg" in copies and ({"raw", "png"} & set(copies)):
        lossless = copies["raw" if "raw" in copies else "png"]
        errors = [np.abs(lossless[i].image.astype(np.float64) - copies["jpeg"][i].image)
                  for i in range(len(lossless))]
        mse = float(np.mean([np.mean(e ** 2) for e in errors]))
        fidelity["jpeg"] = (f"mean abs error {np.mean([e.mean() for e in errors]):.2f}, "
                            f"PSNR {10 * np.log10(255 ** 2 / mse):.1f} dB")
    pinned = getattr(os, "sched_getaffinity", None) and os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {min(pinned)})
    try:
        print(f"\n### Prepared records per codec at {args.codec_res} px, one core "
              f"(pinned: {bool(pinned)}), {len(next(iter(copies.values())))} examples; load "
              f"average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
        print("Examples per CPU-second of this process (wall-clock examples/s in brackets: "
              "lower when other processes share the core); medians of "
              f"{args.repeats} timings.\n")
        print("| codec | KiB / example | image decode alone | read + decode (`copy[i]`) | "
              "decode + augment + tokenize (pipeline) | fidelity |")
        print("|---|---:|---:|---:|---:|---|")
        for codec, copy in copies.items():
            stored = [copy._record(i)[0]["image"] for i in range(len(copy))]
            alone = _timed(lambda: [decode_image(x, codec=codec) for x in stored], len(stored),
                           args.repeats)
            read = _timed(lambda: [copy[i] for i in range(len(copy))], len(copy), args.repeats)
            full = _pipeline_cpu_rate(copy, pipeline_config, tokenizer, config, args)
            print(f"| {codec}{f' (quality {args.jpeg_quality})' if codec == 'jpeg' else ''} | "
                  f"{kib[codec]:.1f} | {_fmt(alone)} | {_fmt(read)} | {_fmt(full)} | "
                  f"{fidelity.get(codec, 'exact')} |", flush=True)
    finally:
        if pinned:
            os.sched_setaffinity(0, pinned)


def _timed(run, count: int, repeats: int) -> tuple[list[float], list[float]]:
    """(examples per CPU-second, examples per wall-clock second) of ``run`` over ``repeats``."""
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        run()
        cpu.append(count / max(time.process_time() - c, 1e-9))
        wall.append(count / (time.perf_counter() - w))
    return cpu, wall


def _pipeline_cpu_rate(source, pipeline_config, tokenizer, config, args):
    """``_timed`` of the training pipeline in this process (no workers), after warm-up."""
    from rmc_jax.data import pipeline as pipe

    dataset = pipe.make_dataset(source, pipeline_config, tokenizer,
                                batch_size=config.batch_size, seed=config.seed, train=True)
    iterator = iter(dataset)
    for _ in range(args.warmup):
        next(iterator)
    return _timed(lambda: [next(iterator) for _ in range(args.batches)],
                  args.batches * config.batch_size, args.repeats)


def _fmt(rates) -> str:
    cpu, wall = rates
    return f"{statistics.median(cpu):.0f} ({statistics.median(wall):.0f})"


def _load_prepare():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prepare_data.py")
    spec = importlib.util.spec_from_file_location("prepare_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _megabytes(directory: str) -> float:
    return sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in
               os.walk(directory) for name in names) / 2**20


if __name__ == "__main__":  # (worker processes are spawned: they import this file)
    main()
