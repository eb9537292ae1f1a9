"""Write a dataset's splits as ArrayRecord shards for fast random access in training.

Opens any registered source (``rmc_jax.data.sources``: synthetic, nih_cxr14, mimic_cxr, ...)
and writes every example of the requested splits, in source order, as records of
``rmc_jax.data.sources.array_record`` (a JSON header + the lossless PNG image, no pickles):

    python tools/prepare_data.py --source nih_cxr14 --root /data/nih --out /data/nih-ar \\
        --shards 64 --max_size 1024
    python tools/prepare_data.py --source synthetic --root "" --out /tmp/synthetic-ar \\
        --splits train,test --size 2000 --shards 4
    python tools/prepare_data.py --source ms_cxr --root /data/ms-cxr --out /data/ms-cxr-ar \\
        --option images_root=/data/mimic-cxr-jpg --option reports_root=/data/mimic-cxr-reports

and train on the copy with ``--config.data.train=array_record --config.data.root=OUT``.

``--max_size`` shrinks images whose longer side exceeds it (boxes are normalised, so they stay
valid); a split the source does not have is reported and skipped; an unreadable image is
skipped with a warning naming it, and the count is printed at the end and kept in the
metadata. An existing, non-empty output directory is refused unless ``--overwrite`` (which
removes only a previous copy's metadata.json and shard files).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys
import time

import numpy as np
from PIL import Image

from rmc_jax.data import sources
from rmc_jax.data.sources import array_record as ar
from rmc_jax.data.sources.images import ImageDecodeError

DEFAULT_SPLITS = ("train", "validate", "test")
# Spellings tried, in order, when a source rejects the canonical split name.
_SPELLINGS = {"train": ("train", "training"),
              "validate": ("validate", "validation", "val", "valid"),
              "test": ("test",), "all": ("all",)}
_WINDOW = 256  # examples in flight at once per split (bounds memory with many workers)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True,
                        help=f"registered source name: {', '.join(sources.available())}")
    parser.add_argument("--root", default="", help="dataset copy (may be empty for synthetic)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--splits", default=",".join(DEFAULT_SPLITS),
                        help="comma-separated splits to write (those the source has)")
    parser.add_argument("--shards", type=int, default=1, help="shards per split")
    parser.add_argument("--max_size", type=int, default=0,
                        help="shrink images so the longer side is at most this (0 = keep)")
    parser.add_argument("--size", type=int, default=0,
                        help="at most this many examples per split (0 = all; synthetic: exactly)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed")
    parser.add_argument("--image_size", type=int, default=128,
                        help="synthetic: rendered image size in pixels (at least 128)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument of the source's constructor (repeatable), e.g. "
                             "images_root=PATH for ms_cxr")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads reading and encoding examples")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous copy in --out")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error(f"--shards must be >= 1, got {args.shards}")
    if args.max_size < 0 or args.size < 0:
        parser.error("--max_size and --size must be >= 0")
    bad = [o for o in args.option if "=" not in o or not o.partition("=")[0].strip()]
    if bad:
        parser.error(f"--option must be KEY=VALUE, got {bad}")
    args.options = dict((k.strip(), v) for k, _, v in (o.partition("=") for o in args.option))
    return args


def resize_long_side(image: np.ndarray, max_size: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [h, w] with max(h, w) <= ``max_size`` (aspect kept, Lanczos);
    returned unchanged when already small enough or ``max_size`` is 0."""
    h, w = image.shape
    if not max_size or max(h, w) <= max_size:
        return image
    scale = max_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS), np.uint8)


def _clear_output(out: str, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; then remove only a previous copy."""
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise FileExistsError(f"output directory {out} is not empty; choose another --out "
                                  "or pass --overwrite to replace the copy in it")
        for name in os.listdir(out):
            if name in (ar.METADATA_FILE, ar.METADATA_FILE + ".tmp") or ar.SHARD_PATTERN.match(
                    name):
                os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)


def _open_split(name, root, split, size, seed, image_size, options, log):
    """The source's split under its canonical name or one of its spellings; None (reported)
    when the source does not have it or it has no examples. A broken dataset copy (SourceError)
    is raised."""
    canonical = ar.canonical_split(split)
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


def prepare(source: str, root: str, out: str, splits=DEFAULT_SPLITS, shards: int = 1,
            max_size: int = 0, size: int = 0, overwrite: bool = False, seed: int = 0,
            image_size: int = 128, workers: int = 1, options: dict | None = None, log=print,
            warn=None) -> dict:
    """Write the copy; returns the metadata written (with per-split ``skipped`` counts).

    ``options`` are keyword arguments of the source's constructor (``get_source``); ``log``
    receives progress and the summary, ``warn`` (default: stderr) one line per unreadable
    example, naming it.
    """
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr, flush=True))
    if source == "array_record":
        raise ValueError("--source array_record would copy a copy; name the original dataset")
    _clear_output(out, overwrite)
    canonical = list(dict.fromkeys(ar.canonical_split(s) for s in splits if s.strip()))
    written, skipped, dataset_name, label_names = {}, {}, None, None
    start = time.perf_counter()
    for split in canonical:
        data = _open_split(source, root, split, size, seed, image_size, options or {}, log)
        if data is None:
            continue
        dataset_name = dataset_name or getattr(data, "name", source)
        label_names = label_names if label_names is not None else tuple(data.label_names)
        if tuple(data.label_names) != label_names:
            raise ValueError(f"{source}: split {split} has label_names {tuple(data.label_names)} "
                             f"but an earlier split has {label_names}; one copy needs one set")
        total = len(data)

        def load(position, data=data, split=split):
            try:
                example = data[position]
            except (ImageDecodeError, FileNotFoundError, sources.ExampleError) as error:
                return position, None, (f"skipping unreadable example {position} of {split}: "
                                        f"{error}")
            image = resize_long_side(example.image, max_size)
            return position, ar.encode_example(dataclasses.replace(example, image=image)), None

        bad = 0
        with ar.SplitWriter(out, split, shards, total) as writer, \
                concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            for first in range(0, total, _WINDOW):
                for position, record, error in pool.map(load, range(first,
                                                                    min(total, first + _WINDOW))):
                    if error:
                        bad += 1
                        warn(error)
                    else:
                        writer.write_record(record, position)
                done = min(total, first + _WINDOW)
                if done < total and (done // _WINDOW) % 40 == 0:
                    log(f"{split}: {done}/{total} examples, "
                        f"{done / (time.perf_counter() - start):.0f}/s")
            entry = writer.close()
        entry["skipped"] = bad
        written[split], skipped[split] = entry, bad
        shards_text = ", ".join(f"{s['file']} ({s['num_examples']})" for s in entry["shards"])
        log(f"{split}: {entry['num_examples']} examples in {len(entry['shards'])} shard(s): "
            f"{shards_text}; {bad} unreadable skipped")
    if not written:
        raise ValueError(f"{source} has none of the splits {canonical}; nothing was written")
    settings = {"max_size": max_size, "size": size}
    if source == "synthetic":
        settings.update(seed=seed, image_size=max(image_size, 128))
    ar.write_metadata(out, dataset_name, label_names, written, settings=settings)
    total_bad = sum(skipped.values())
    megabytes = sum(os.path.getsize(os.path.join(out, s["file"]))
                    for entry in written.values() for s in entry["shards"]) / 2**20
    log(f"wrote {sum(e['num_examples'] for e in written.values())} examples "
        f"({megabytes:.1f} MiB) of {dataset_name} to {out} in "
        f"{time.perf_counter() - start:.1f} s; splits: {', '.join(written)}")
    log(f"skipped {total_bad} unreadable example(s)"
        + (" (warnings above name them)" if total_bad else ""))
    log(f"train on it with --config.data.train=array_record --config.data.root={out}")
    return ar.read_metadata(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        prepare(args.source, args.root, args.out, args.splits.split(","), args.shards,
                args.max_size, args.size, args.overwrite, args.seed, args.image_size,
                args.workers, args.options)
    except (FileExistsError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
