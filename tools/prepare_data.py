"""Write a dataset's splits as a TensorFlow Datasets (TFDS) dataset in ArrayRecord files.

Opens any registered source (``rmc_jax.data.sources``: synthetic, nih_cxr14, mimic_cxr, ...)
and writes every example of the requested splits, in source order, as the TFDS dataset NAME
under DATA_DIR (``rmc_jax.data.sources.tfds_format``: the image and the Example's fields as
TFDS features; no TensorFlow needed):

    python tools/prepare_data.py --source nih_cxr14 --root /data/nih --data_dir /data/tfds \\
        --shards 64 --image_size 224
    python tools/prepare_data.py --source nih_cxr14 --root /data/nih --data_dir /data/tfds \\
        --name rmc_nih_1024 --max_size 1024 --codec png
    python tools/prepare_data.py --source synthetic --data_dir /tmp/tfds --name rmc_synthetic \\
        --splits train,test --size 20000 --image_size 224 --shards 16
    python tools/prepare_data.py --source ms_cxr --root /data/ms-cxr --data_dir /data/tfds \\
        --option images_root=/data/mimic-cxr-jpg --option reports_root=/data/mimic-cxr-reports

Train on the copy with ``--config.data.train=tfds:NAME --config.data.root=DATA_DIR``, or read it
anywhere with ``tfds.data_source('NAME', data_dir=DATA_DIR)``. NAME (``--name``) defaults to
``rmc_<source>``.

Training resolution: ``--image_size N`` resizes every image once, here, as the training
pipeline's letterbox would (longer side N, bilinear; the padding is left to the pipeline), so
that reading an example costs its decode and nothing else; train on the copy with
``data.image_size=N``. The synthetic source renders at N (at least 128 px) and is pre-rendered
this way, so a run on an accelerator reads records instead of rendering radiographs.
``--max_size`` instead only shrinks images whose longer side exceeds it (Lanczos; for a copy
kept for several resolutions). Boxes are normalised, so they stay valid either way.

``--codec`` stores images as ``raw`` uint8 bytes, ``png`` or ``jpeg`` (``--jpeg_quality``,
default 95). The default, ``auto``, is raw at a training resolution: of the lossless codecs it
decodes fastest (a memory copy against a zlib inflate; BENCHMARKS.md, "Prepared records per
codec"), at 50 KiB per 224 px image. Without ``--image_size`` it is png, because raw full-size
radiographs (several MB each) would multiply the copy's size; jpeg is the smallest and lossy.

A split the source does not have is reported and skipped; an unreadable image is
skipped with a warning naming it, and the count is printed at the end and kept in the copy's
metadata.json. An existing copy (DATA_DIR/NAME/VERSION) is refused unless ``--overwrite``
(which replaces only that copy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from rmc_jax.data import sources
from rmc_jax.data.sources import tfds_format

DEFAULT_SPLITS = ("train", "validation", "test")
# Spellings tried, in order, when a source rejects the split name.
_SPELLINGS = {"train": ("train", "training"),
              "validation": ("validate", "validation", "val", "valid"),
              "test": ("test",), "full": ("all",)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True,
                        help=f"registered source name: {', '.join(sources.available())}")
    parser.add_argument("--root", default="", help="dataset copy (may be empty for synthetic)")
    parser.add_argument("--data_dir", required=True,
                        help="TFDS data directory the dataset is written into")
    parser.add_argument("--name", default="",
                        help="TFDS dataset name (snake_case; default rmc_<source>)")
    parser.add_argument("--splits", default=",".join(DEFAULT_SPLITS),
                        help="comma-separated splits to write (those the source has)")
    parser.add_argument("--shards", type=int, default=0,
                        help="shards per split (0 = TFDS's choice: 64 MiB to 1 GiB each)")
    parser.add_argument("--image_size", type=int, default=0,
                        help="training resolution: resize each image as the pipeline's letterbox "
                             "would (longer side = this; 0 = keep; synthetic: renders at it)")
    parser.add_argument("--max_size", type=int, default=0,
                        help="shrink images so the longer side is at most this (0 = keep); "
                             "not with --image_size")
    parser.add_argument("--codec", default="auto", choices=("auto",) + tfds_format.CODECS,
                        help="image storage: raw uint8 bytes, png or jpeg; auto = raw with "
                             "--image_size (lossless, fastest to decode), else png")
    parser.add_argument("--jpeg_quality", type=int, default=tfds_format.JPEG_QUALITY,
                        help="--codec jpeg: quality 1-100")
    parser.add_argument("--size", type=int, default=0,
                        help="at most this many examples per split (0 = all; synthetic: exactly)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument of the source's constructor (repeatable), e.g. "
                             "images_root=PATH for ms_cxr")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads reading and encoding examples")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous copy of the dataset in --data_dir")
    args = parser.parse_args(argv)
    if args.shards < 0 or args.max_size < 0 or args.size < 0 or args.image_size < 0:
        parser.error("--shards, --image_size, --max_size and --size must be >= 0")
    if args.image_size and args.max_size:
        parser.error("give --image_size (resize to the training resolution) or --max_size "
                     "(shrink larger images), not both")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error("--jpeg_quality must be in 1..100")
    bad = [o for o in args.option if "=" not in o or not o.partition("=")[0].strip()]
    if bad:
        parser.error(f"--option must be KEY=VALUE, got {bad}")
    args.options = dict((k.strip(), v) for k, _, v in (o.partition("=") for o in args.option))
    return args


def _open_split(name, root, split, size, seed, image_size, options, log):
    """The source's split under its TFDS name or one of its spellings; None (reported) when
    the source does not have it or it has no examples. A broken dataset copy (SourceError) is
    raised."""
    canonical = tfds_format.canonical_split(split)
    errors = []
    for spelling in _SPELLINGS.get(canonical, (split,)):
        try:
            if not options:
                return sources.open_source(name, root, spelling, size, seed, image_size)
            data = sources.get_source(name, root or None, spelling, **options)
            return sources.Prefix(data, size) if size and len(data) > size else data
        except sources.EmptySplitError as error:
            errors.append(str(error))
        except sources.SourceError:
            raise
        except ValueError as error:
            errors.append(str(error))
    log(f"{canonical}: not written, {name} has no such split ({errors[0]})")
    return None


def resolve_codec(codec: str, image_size: int) -> str:
    """``auto`` -> raw at a training resolution (lossless, fastest to decode), else png."""
    if codec == "auto":
        return "raw" if image_size else "png"
    return tfds_format.check_codec(codec)


def prepare(source: str, root: str, data_dir: str, name: str = "", splits=DEFAULT_SPLITS,
            shards: int = 0, max_size: int = 0, size: int = 0, overwrite: bool = False,
            seed: int = 0, image_size: int = 0, workers: int = 1,
            options: dict | None = None, log=print, warn=None, codec: str = "auto",
            jpeg_quality: int = tfds_format.JPEG_QUALITY) -> dict:
    """Write the copy; returns a summary: ``name``, ``path`` (DATA_DIR/NAME/VERSION), per split
    ``num_examples``, ``shards`` (file names), ``skipped`` (unreadable examples) and ``codec``.

    ``image_size`` (training resolution) or ``max_size`` and ``codec`` as the command's
    options; ``options`` are keyword arguments of the source's constructor (``get_source``);
    ``log`` receives progress and the summary, ``warn`` (default: stderr) one line per
    unreadable example, naming it.
    """
    import tensorflow_datasets as tfds

    if image_size and max_size:
        raise ValueError("give image_size (resize to the training resolution) or max_size "
                         "(shrink larger images), not both")
    codec = resolve_codec(codec, image_size)
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr, flush=True))
    name = tfds_format.check_name(name or f"rmc_{source}")
    path = os.path.join(data_dir, name, tfds_format.VERSION)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists: {name} was already prepared in {data_dir}; choose "
                              "another --name or --data_dir, or pass --overwrite to replace it")
    canonical = list(dict.fromkeys(tfds_format.canonical_split(s) for s in splits if s.strip()))
    opened = {}
    for split in canonical:
        data = _open_split(source, root, split, size, seed, max(image_size, 128),
                           options or {}, log)
        if data is not None:
            opened[split] = data
    if not opened:
        raise ValueError(f"{source} has none of the splits {canonical}; nothing was written")
    dataset_name = getattr(next(iter(opened.values())), "name", source)
    settings = {"source": source, "root": root, "image_size": image_size,
                "max_size": max_size, "codec": codec, "size": size,
                "options": dict(options or {})}
    if codec == "jpeg":
        settings["jpeg_quality"] = jpeg_quality
    if source == "synthetic":
        settings.update(seed=seed, rendered_size=max(image_size, 128))
    if os.path.exists(path):
        shutil.rmtree(path)
    start = time.perf_counter()
    tfds.disable_progress_bar()
    summary = tfds_format.write(
        name, data_dir, opened, settings=settings, max_size=max_size, image_size=image_size,
        codec=codec, jpeg_quality=jpeg_quality, shards=shards,
        workers=workers, manual_dir=root, warn=warn, log=log,
        description=f"{dataset_name} prepared by rmc_jax's tools/prepare_data.py from "
                    f"{root or 'the generator'}")
    for split in summary["num_examples"]:
        files = summary["shards"][split]
        log(f"{split}: {summary['num_examples'][split]} examples in {len(files)} shard(s); "
            f"{summary['skipped'][split]} unreadable skipped")
    total_bad = sum(summary["skipped"].values())
    megabytes = sum(os.path.getsize(os.path.join(path, f)) for files in summary["shards"].values()
                    for f in files) / 2**20
    log(f"wrote {sum(summary['num_examples'].values())} examples ({megabytes:.1f} MiB, "
        f"{codec} images" + (f" at {image_size} px" if image_size else "") + f") of "
        f"{dataset_name} to {path} in {time.perf_counter() - start:.1f} s; splits: "
        f"{', '.join(summary['num_examples'])}")
    log(f"skipped {total_bad} unreadable example(s)"
        + (" (warnings above name them)" if total_bad else ""))
    resolution = f" --config.data.image_size={image_size}" if image_size else ""
    log(f"train on it with --config.data.train=tfds:{name} --config.data.root={data_dir}"
        f"{resolution}, or read it with tfds.data_source({name!r}, data_dir={data_dir!r})")
    summary["codec"] = codec
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        prepare(args.source, args.root, args.data_dir, args.name, args.splits.split(","),
                args.shards, args.max_size, args.size, args.overwrite, args.seed,
                args.image_size, args.workers, args.options, codec=args.codec,
                jpeg_quality=args.jpeg_quality)
    except (FileExistsError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
