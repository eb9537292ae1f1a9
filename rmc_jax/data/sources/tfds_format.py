"""Prepared copies of any source as TensorFlow Datasets (TFDS) datasets in ArrayRecord files.

Reading JPEG/PNG/DICOM files one by one from a tree with millions of entries is slow on network
file systems and at scale. ``tools/prepare_data.py`` converts a registered source once into a
TFDS dataset (``ExamplesBuilder``: manual data directory, no download, ArrayRecord shards, the
source's order kept), and ``TfdsSource`` reads it back, through ``tfds.data_source``, as the very
same Examples. TensorFlow is never imported: TFDS writes and reads ArrayRecord without it (the
images are encoded here with Pillow or NumPy, and decoded here too).

Images are stored with one of three codecs (``CODECS``; ``prepare_data.py --codec``):

    raw    uint8 pixels as bytes (TFDS ``Tensor(encoding='bytes')``): lossless, and decoding is a
           memory view, so it is the fastest to read; largest on disk (H * W bytes)
    png    lossless, about half of raw on radiographs, the slowest to decode (zlib)
    jpeg   lossy (``jpeg_quality``, default 95: mean error under one grey level), the smallest,
           decodes faster than PNG

Prepared at the training resolution (``image_size``), an image is resized once, offline, as the
pipeline's letterbox would resize it (``transforms.fit_long_side``: longer side = image_size,
bilinear, no padding), so the pipeline's letterbox is a copy and decoding is the only per-example
image cost left. The padding is not stored: the training crop would cut into it and the
letterbox's content box would include it.

Layout (``tfds.data_source(NAME, data_dir=DATA_DIR)`` opens it as any TFDS dataset)::

    DATA_DIR/NAME/1.0.0/dataset_info.json, features.json     TFDS's description of the copy
    DATA_DIR/NAME/1.0.0/metadata.json                        source, label_names, settings,
                                                             unreadable examples skipped
    DATA_DIR/NAME/1.0.0/NAME-<split>.array_record-NNNNN-of-MMMMM

Splits are TFDS's names (``train``, ``validation``, ``test``); a source's ``all`` split is
stored as ``full`` (TFDS reserves ``all`` for the union of a dataset's splits). ``TfdsSource``
also takes ``val``, ``valid``, ``validate``, ``training``, ``all`` (``full`` where the copy has
it, else TFDS's union) and TFDS slices (``train[:1000]``).

Features of one example (``features()``)::

    example_id, report, source, view   Text
    image        uint8 [H, W, 1], 8-bit grayscale: Image (PNG or JPEG) or Tensor (raw bytes)
    labels       float32 [C]; label_mask bool [C]  (C = len(metadata label_names))
    regions      Sequence of {bbox: BBoxFeature (TFDS's normalised ymin, xmin, ymax, xmax),
                              caption: Text, finding_id, side_id, zone_id, size_id: int32}

so ``TfdsSource(NAME, DATA_DIR, split)[i]`` equals the i-th Example written, pixel for pixel
(raw, png; jpeg to within its quality; resized when prepared at a resolution).

Just over 500 lines on purpose: the writer and the reader of one format, which must not drift
apart.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import os
import re
import tempfile
import types
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from rmc_jax.data import transforms
from rmc_jax.data.schema import Example
from rmc_jax.data.sources.base import ExampleError, Source, SourceError
from rmc_jax.data.sources.images import ImageDecodeError

VERSION = "1.0.0"
LAYOUT = ("a TFDS dataset written by tools/prepare_data.py: <data_dir>/<name>/<version>/ with "
          "dataset_info.json, features.json, metadata.json and <name>-<split>.array_record-* "
          "shards")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                 "validate": "validation", "valid": "validation", "val": "validation",
                 "test": "test", "all": "full", "full": "full"}
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
_REGION_INTS = (("finding_id", "finding_ids"), ("side_id", "side_ids"), ("zone_id", "zone_ids"),
                ("size_id", "size_ids"))
_TEXTS = ("example_id", "report", "source", "view")
_WINDOW = 256  # examples in flight at once per split while writing (bounds memory)
CODECS = ("raw", "png", "jpeg")
JPEG_QUALITY = 95


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


@functools.cache
def _local_dataset_info():
    """``tfds.core.DatasetInfo`` of a dataset that exists only in local files. A TFDS builder
    whose copy is not written yet looks its name up in TFDS's public bucket
    (``initialize_from_bucket``), which holds nothing of ours and leaves an empty temporary
    directory behind on every write."""
    class LocalDatasetInfo(_tfds().core.DatasetInfo):
        def initialize_from_bucket(self) -> None:
            """Nothing to fetch: rmc_jax copies are never in TFDS's bucket."""

    return LocalDatasetInfo


def canonical_split(split: str) -> str:
    """'val', 'validate', ... -> 'validation', 'all' -> 'full'; other names (and TFDS slices)
    are kept."""
    key = str(split).strip()
    return SPLIT_ALIASES.get(key.lower(), key)


# ---------------------------------------------------------------------------------------------
# Features: Example <-> TFDS example
# ---------------------------------------------------------------------------------------------


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"image codec {codec!r}: expected one of {', '.join(CODECS)}")
    return codec


def image_feature(codec: str = "png"):
    """The TFDS feature of the image stored with ``codec`` (``CODECS``)."""
    f = _tfds().features
    doc = "the radiograph, 8-bit grayscale, origin top-left as stored"
    if check_codec(codec) == "raw":
        return f.Tensor(shape=(None, None, 1), dtype=np.uint8, encoding="bytes",
                        doc=doc + "; raw pixel bytes")
    return f.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format=codec, doc=doc)


def features(num_labels: int, codec: str = "png"):
    """The ``tfds.features.FeaturesDict`` of one Example with ``num_labels`` classes, its image
    stored with ``codec``."""
    tfds = _tfds()
    f = tfds.features
    return f.FeaturesDict({
        "example_id": f.Text(doc="unique within the source"),
        "image": image_feature(codec),
        "report": f.Text(doc="FINDINGS / IMPRESSION under their headers, '' when none"),
        "labels": f.Tensor(shape=(num_labels,), dtype=np.float32,
                           doc="1 present, 0 absent, per metadata label_names"),
        "label_mask": f.Tensor(shape=(num_labels,), dtype=np.bool_,
                               doc="False where the label is unknown or uncertain"),
        "regions": f.Sequence({
            "bbox": f.BBoxFeature(doc="normalised (ymin, xmin, ymax, xmax) of the image"),
            "caption": f.Text(doc="the sentence describing the region"),
            **{name: f.Tensor(shape=(), dtype=np.int32, doc="-1 unknown")
               for name, _ in _REGION_INTS},
        }),
        "source": f.Text(doc="dataset name"),
        "view": f.Text(doc="'PA', 'AP', 'LATERAL' or ''"),
    })


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """uint8 [H, W] -> PNG bytes (8-bit grayscale, lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)  # mode L
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """uint8 [H, W] -> baseline JPEG bytes (one grayscale component) at ``quality``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def encode_image(image: np.ndarray, codec: str = "png", jpeg_quality: int = JPEG_QUALITY):
    """uint8 [H, W] -> the value ``image_feature(codec)`` serialises: PNG or JPEG bytes, or the
    array [H, W, 1] itself for raw (TFDS writes its bytes)."""
    if check_codec(codec) == "raw":
        return np.ascontiguousarray(image)[..., None]
    return encode_png(image) if codec == "png" else encode_jpeg(image, jpeg_quality)


def encode_example(example: Example, codec: str = "png",
                   jpeg_quality: int = JPEG_QUALITY) -> dict:
    """One Example -> the feature values ``features(..., codec)`` serialises."""
    image = np.asarray(example.image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"example {example.source}:{example.example_id}: image must be uint8 "
                         f"[H, W], got {image.dtype} {image.shape}")
    boxes = np.asarray(example.boxes, np.float32).reshape(-1, 4)
    return {
        "example_id": str(example.example_id),
        "image": encode_image(image, codec, jpeg_quality),
        "report": example.report, "source": example.source, "view": example.view,
        "labels": np.asarray(example.labels, np.float32),
        "label_mask": np.asarray(example.label_mask, np.bool_),
        "regions": {"bbox": boxes[:, [1, 0, 3, 2]], "caption": list(example.captions),
                    **{name: np.asarray(getattr(example, field), np.int32)
                       for name, field in _REGION_INTS}},
    }


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_texts(values: dict) -> tuple[str, tuple]:
    """(report, captions) of a deserialised example; its image is not decoded."""
    return _text(values["report"]), tuple(_text(c) for c in values["regions"]["caption"])


def decode_image(value, where: str = "record", codec: str = "png") -> np.ndarray:
    """The stored image, undecoded (``tfds.decode.SkipDecoding``) -> uint8 [H, W]: PNG or JPEG
    bytes are decoded with Pillow, raw pixels ({'value': bytes, 'shape': [H, W, 1]}) viewed
    as an array (read-only, no copy).

    Raises ImageDecodeError naming ``where`` for an image that cannot be decoded.
    """
    if isinstance(value, dict):  # raw: TFDS's serialised Tensor(encoding='bytes')
        shape = tuple(int(n) for n in np.asarray(value.get("shape", ())).reshape(-1))
        pixels = value.get("value", b"")
        if len(shape) != 3 or shape[-1] != 1 or len(pixels) != int(np.prod(shape)):
            raise ImageDecodeError(f"{where}: cannot decode the record's RAW image: "
                                   f"{len(pixels)} bytes for the stored shape {shape} (expected "
                                   "H * W bytes for [H, W, 1])")
        return np.frombuffer(pixels, np.uint8).reshape(shape[:2])
    try:
        with Image.open(io.BytesIO(value)) as decoded:
            decoded.load()
            if decoded.mode != "L":
                raise ValueError(f"image mode is {decoded.mode}, expected 8-bit grayscale 'L'")
            return np.asarray(decoded, np.uint8)
    except (OSError, SyntaxError, ValueError, TypeError) as error:
        raise ImageDecodeError(f"{where}: cannot decode the record's {codec.upper()} image: "
                               f"{error}") from error


def decode_example(values: dict, where: str = "record", codec: str = "png") -> Example:
    """A deserialised example (its image undecoded) -> the Example that was written.

    Raises ImageDecodeError naming ``where`` for an image that cannot be decoded.
    """
    image = decode_image(values["image"], where, codec)
    regions = values["regions"]
    boxes = np.asarray(regions["bbox"], np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
    ints = {field: np.asarray(regions[name], np.int32).reshape(-1) for name, field in _REGION_INTS}
    return Example(
        example_id=_text(values["example_id"]), image=image, report=_text(values["report"]),
        labels=np.asarray(values["labels"], np.float32),
        label_mask=np.asarray(values["label_mask"], np.bool_),
        boxes=np.ascontiguousarray(boxes), captions=decode_texts(values)[1],
        source=_text(values["source"]), view=_text(values["view"]), **ints)


def resize_long_side(image: np.ndarray, max_size: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [h, w] with max(h, w) <= ``max_size`` (aspect kept, Lanczos);
    returned unchanged when already small enough or ``max_size`` is 0."""
    h, w = image.shape
    if not max_size or max(h, w) <= max_size:
        return image
    scale = max_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS), np.uint8)


# ---------------------------------------------------------------------------------------------
# Writing: a TFDS builder around any source
# ---------------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """A dataset name TFDS can store and that no dataset of the TFDS catalog already has (such a
    name would make ``tfds.data_source`` build the catalog's dataset instead of reading ours)."""
    if not NAME_PATTERN.fullmatch(name or ""):
        raise ValueError(f"dataset name {name!r} must be snake_case: lower-case letters, digits "
                         "and underscores, starting with a letter (e.g. 'rmc_mimic_cxr')")
    tfds = _tfds()
    try:
        tfds.builder_cls(name)
    except tfds.core.registered.DatasetNotFoundError:
        return name
    except Exception:  # noqa: BLE001 - a catalog dataset whose module fails to import here
        pass
    raise ValueError(f"dataset name {name!r} is a dataset of the TFDS catalog; choose another "
                     f"(e.g. 'rmc_{name}')")


@dataclasses.dataclass
class SplitSpec:
    """One split to write: its TFDS name and the opened source."""

    name: str
    source: Sequence


class ExamplesBuilder:
    """Mixin of the TFDS builder made by ``builder_class``; see ``builder_class``."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "A local copy of the dataset in its official layout (see rmc_jax's README, 'Datasets'), "
        "given to tools/prepare_data.py as --root; nothing is downloaded.")

    def __init__(self, *, splits: Sequence[SplitSpec], source_name: str, label_names,
                 settings: dict, max_size: int = 0, image_size: int = 0, codec: str = "png",
                 jpeg_quality: int = JPEG_QUALITY, workers: int = 1,
                 warn: Callable[[str], None] = print, log: Callable[[str], None] = print,
                 description: str = "", **kwargs):
        self._splits, self._source_name = list(splits), source_name
        self._label_names, self._settings = tuple(label_names), dict(settings)
        self._max_size, self._workers = int(max_size), max(1, int(workers))
        self._image_size, self._codec = int(image_size), check_codec(codec)
        self._jpeg_quality = int(jpeg_quality)
        self._warn, self._log, self._description = warn, log, description
        self.skipped = {spec.name: 0 for spec in self._splits}
        super().__init__(**kwargs)

    def _info(self):
        tfds = _tfds()
        return _local_dataset_info()(
            builder=self, description=self._description, features=features(
                len(self._label_names), self._codec),
            metadata=tfds.core.MetadataDict(
                source=self._source_name, label_names=list(self._label_names),
                settings=self._settings, skipped=dict(self.skipped), format_version=VERSION,
                codec=self._codec, image_size=self._image_size,
                **({"jpeg_quality": self._jpeg_quality} if self._codec == "jpeg" else {})),
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {spec.name: self._generate_examples(spec) for spec in self._splits}

    def _load(self, data, split: str, position: int):
        """(position, feature values or None, warning or None) of one example."""
        try:
            example = data[position]
        except (ImageDecodeError, FileNotFoundError, ExampleError) as error:
            return position, None, f"skipping unreadable example {position} of {split}: {error}"
        try:
            image = np.asarray(example.image)
            if image.ndim == 2 and image.dtype == np.uint8 and min(image.shape) > 0:
                image = (transforms.fit_long_side(image, self._image_size) if self._image_size
                         else resize_long_side(image, self._max_size))
            example = dataclasses.replace(example, image=image).validate()
        except ValueError as error:  # a field of the wrong form (TFDS would stop at it)
            return position, None, f"skipping invalid example {position} of {split}: {error}"
        return position, encode_example(example, self._codec, self._jpeg_quality), None

    def _generate_examples(self, spec: SplitSpec):
        """(position in the source, feature values); unreadable examples are counted, warned
        about (naming them) and left out. Keys are positions, so the copy keeps the source's
        order (``disable_shuffling``)."""
        total = len(spec.source)
        with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
            for first in range(0, total, _WINDOW):
                window = range(first, min(total, first + _WINDOW))
                for position, values, error in pool.map(
                        lambda i: self._load(spec.source, spec.name, i), window):
                    if error:
                        self.skipped[spec.name] += 1
                        self.info.metadata["skipped"] = dict(self.skipped)
                        self._warn(error)
                    else:
                        yield position, values
                done = window.stop
                if done < total and (done // _WINDOW) % 40 == 0:
                    self._log(f"{spec.name}: {done}/{total} examples")
        if self.skipped[spec.name] == total:
            raise ValueError(f"{self._source_name}: every example of split {spec.name} is "
                             "unreadable (warnings above name them); nothing to write")


def builder_class(name: str):
    """A ``tfds.core.GeneratorBasedBuilder`` class writing dataset ``name``.

    Its keyword arguments (besides TFDS's ``data_dir``, ``file_format``): ``splits`` (SplitSpec
    list), ``source_name``, ``label_names``, ``settings`` (kept in metadata.json),
    ``max_size``, ``image_size``, ``codec``, ``jpeg_quality``, ``workers``, ``warn``, ``log``,
    ``description``. The class is not registered
    with TFDS: the copy is read from its files, so ``tfds.data_source(name, data_dir=...)``
    needs no rmc_jax code.
    """
    tfds = _tfds()
    check_name(name)
    return types.new_class(
        "".join(part.title() for part in name.split("_")),
        (ExamplesBuilder, tfds.core.GeneratorBasedBuilder), {"skip_registration": True},
        lambda namespace: namespace.update(name=name, VERSION=tfds.core.Version(VERSION),
                                           __module__=__name__))


def write(name: str, data_dir: str, splits: dict, *, settings: dict | None = None,
          max_size: int = 0, image_size: int = 0, codec: str = "png",
          jpeg_quality: int = JPEG_QUALITY, shards: int = 0, workers: int = 1,
          manual_dir: str = "", warn: Callable[[str], None] = print,
          log: Callable[[str], None] = print, description: str = "") -> dict:
    """Write ``splits`` ({TFDS split name: source}) as the TFDS dataset ``name`` in
    ``data_dir`` (ArrayRecord, ``shards`` per split or TFDS's choice for 0), images stored with
    ``codec`` and either resized to the training resolution ``image_size`` (as the pipeline's
    letterbox resizes, ``transforms.fit_long_side``) or shrunk to at most ``max_size`` (Lanczos);
    0 keeps them as they are.

    The sources must share ``label_names``; the copy's ``name``/``label_names`` are the first
    source's. Returns ``name``, ``path`` (DATA_DIR/NAME/VERSION), per split ``num_examples``,
    ``shards`` (file names) and ``skipped`` (unreadable examples, each also passed to ``warn``).
    """
    tfds = _tfds()
    first = next(iter(splits.values()))
    label_names = tuple(first.label_names)
    for split, data in splits.items():
        if tuple(data.label_names) != label_names:
            raise ValueError(f"split {split} has label_names {tuple(data.label_names)} but "
                             f"another has {label_names}; one copy needs one set")
    source_name = str(getattr(first, "name", "") or name)
    builder = builder_class(name)(
        data_dir=data_dir, file_format="array_record",
        splits=[SplitSpec(canonical_split(k), v) for k, v in splits.items()],
        source_name=source_name, label_names=label_names, settings=settings or {},
        max_size=max_size, image_size=image_size, codec=codec, jpeg_quality=jpeg_quality,
        workers=workers, warn=warn, log=log,
        description=description or f"{source_name} examples prepared by rmc_jax")
    with tempfile.TemporaryDirectory(prefix="rmc_jax_tfds_") as downloads:
        builder.download_and_prepare(download_dir=downloads, download_config=(
            tfds.download.DownloadConfig(manual_dir=manual_dir or None,
                                         num_shards=shards or None)))
    info = builder.info
    return {"name": name, "path": str(builder.data_dir), "skipped": dict(builder.skipped),
            "num_examples": {s: info.splits[s].num_examples for s in info.splits},
            "shards": {s: [os.path.basename(f) for f in info.splits[s].filenames]
                       for s in info.splits}}


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class TfdsSource(Source):
    """One split of a prepared TFDS copy, as the Examples that were written.

    Args:
      dataset: the TFDS dataset name (``tools/prepare_data.py --name``).
      root: the TFDS ``data_dir`` holding it.
      split: 'train', 'validation' (or 'val', 'valid', 'validate'), 'test', 'all' (the
        source's, stored as 'full'; else every split), or a TFDS slice such as 'train[:1000]';
        whatever the copy holds.

    ``name`` and ``label_names`` are those of the source the copy was prepared from. The
    records are read through ``tfds.data_source`` (ArrayRecord, random access, readers opened
    lazily in each process); images are decoded here (``decode_image``), so ``texts(i)``
    never decodes one. ``codec`` and ``image_size`` (0: not
    resized to a training resolution) say how the copy was prepared.
    """

    def __init__(self, dataset: str, root, split: str = "train"):
        tfds = _tfds()
        self.dataset, self.root = str(dataset), os.fspath(root) if root else ""
        if not self.root:
            raise SourceError(f"no TFDS data_dir given for {self.dataset!r} (data.root); "
                              f"expected {LAYOUT}")
        where = os.path.join(self.root, self.dataset)
        if not os.path.isdir(where):
            raise SourceError(f"dataset directory not found: {where}; expected {LAYOUT}")
        try:
            builder = tfds.builder(self.dataset, data_dir=self.root)
            info = builder.info
            metadata = dict(info.metadata or {})
        except Exception as error:  # noqa: BLE001 - TFDS raises many types for broken copies
            raise SourceError(f"cannot read the TFDS dataset {where}: {error}; expected "
                              f"{LAYOUT}") from error
        for key in ("source", "label_names"):
            if key not in metadata:
                raise SourceError(f"{builder.data_dir}: metadata.json has no {key!r}; expected "
                                  f"{LAYOUT}")
        self.info, self.data_dir = info, str(builder.data_dir)
        self.name, self.label_names = str(metadata["source"]), tuple(metadata["label_names"])
        self.metadata = metadata
        encoded = isinstance(info.features["image"], tfds.features.Image)
        self.codec = str(metadata.get("codec") or (
            info.features["image"].encoding_format if encoded else "raw"))
        self.image_size = int(metadata.get("image_size") or 0)
        self.split = canonical_split(split)
        base_split = re.split(r"[\[+]", self.split)[0]
        if base_split == "full" and "full" not in info.splits:  # TFDS's union of the splits
            self.split, base_split = "all" + self.split[len("full"):], "all"
        if base_split not in info.splits and base_split != "all":
            alias = f" ({self.split!r})" if self.split != split else ""
            raise SourceError(f"split {split!r}{alias} is not in {self.data_dir}; it holds "
                              f"{sorted(info.splits) or 'no splits'}")
        try:
            instructions = info.splits[self.split].file_instructions
        except Exception as error:  # noqa: BLE001 - a malformed slice
            raise SourceError(f"split {split!r} of {self.data_dir}: {error}") from error
        for instruction in instructions:
            if not os.path.isfile(instruction.filename):
                raise SourceError(f"shard file not found: {instruction.filename} (listed in "
                                  f"{self.data_dir}/dataset_info.json); expected {LAYOUT}")
        self._files = [(i.filename, i.skip) for i in instructions]
        self._ends = np.cumsum([i.take for i in instructions]).tolist()
        self._data = tfds.data_source(self.dataset, split=self.split, data_dir=self.root,
                                      download=False,
                                      decoders={"image": tfds.decode.SkipDecoding()})

    def __len__(self) -> int:
        return len(self._data)

    def split_sizes(self) -> dict:
        return {name: split.num_examples for name, split in self.info.splits.items()}

    def _where(self, position: int) -> str:
        shard = int(np.searchsorted(self._ends, position, side="right"))
        filename, skip = self._files[shard]
        return f"{filename} record {skip + position - (self._ends[shard - 1] if shard else 0)}"

    def _record(self, index: int) -> tuple[dict, str]:
        position = self._position(index)
        where = self._where(position)
        try:
            return self._data[position], where
        except Exception as error:  # noqa: BLE001 - riegeli "Corrupted", protobuf DecodeError
            raise ExampleError(f"{where}: cannot read the record: {error}") from error

    def __getitem__(self, index: int) -> Example:
        return decode_example(*self._record(index), self.codec)

    def texts(self, index: int) -> tuple[str, tuple]:
        """(report, captions) of example ``index`` without decoding its image."""
        return decode_texts(self._record(index)[0])
