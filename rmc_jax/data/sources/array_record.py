"""ArrayRecord shards of Examples: one prepared copy of any source, read with fast random access.

Reading JPEG/PNG/DICOM files one by one from a directory tree with millions of entries is slow on
network file systems and at scale; ``tools/prepare_data.py`` writes a source once into a few
large ArrayRecord files (random access by record index, no per-file open), and this module reads
them back as the very same Examples.

Layout of a prepared directory ``DIR``::

    DIR/metadata.json                               format, version, source name, label_names,
                                                    per split: shard file names and counts
    DIR/<split>-00000-of-0000N.array_record         the split's records, in source order,
    ...                                             consecutive runs of examples per shard

Splits are stored under canonical names (``train``, ``validate``, ``test`` or ``all``); the
reader accepts the usual aliases (``val``, ``valid``, ``validation``, ``training``).

One record per Example, no pickled Python objects::

    uint32 little-endian n | n bytes of UTF-8 JSON header | PNG of the image (8-bit grayscale)

The header holds example_id, report, captions, source, view and every array field as
``{"dtype", "shape", "values"}`` (float32 values survive JSON exactly); the PNG is lossless, so
``ArrayRecordSource(DIR, split)[i]`` equals the i-th Example written, pixel for pixel.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import re
import struct
import threading

import numpy as np
from PIL import Image

from rmc_jax.data.schema import Example
from rmc_jax.data.sources.base import ExampleError, Source, SourceError
from rmc_jax.data.sources.images import ImageDecodeError

FORMAT = "rmc_jax.examples.array_record"
VERSION = 1
METADATA_FILE = "metadata.json"
LAYOUT = ("a prepared ArrayRecord copy: <dir>/metadata.json (format, version, source, "
          "label_names, splits) and <dir>/<split>-NNNNN-of-MMMMM.array_record shards, as "
          "written by tools/prepare_data.py")
SPLIT_ALIASES = {"train": "train", "training": "train", "validate": "validate",
                 "validation": "validate", "valid": "validate", "val": "validate",
                 "test": "test", "all": "all"}
SHARD_PATTERN = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<count>\d{5})"
                           r"\.array_record$")
# Writer: one record per chunk, so that reading record i decodes only record i.
WRITER_OPTIONS = "group_size:1"
# Reader: no read-ahead and no reader threads, which is what random access wants.
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
_ARRAY_FIELDS = ("labels", "label_mask", "boxes", "finding_ids", "side_ids", "zone_ids",
                 "size_ids")
_HEADER_LENGTH = struct.Struct("<I")


def canonical_split(split: str) -> str:
    """'val', 'validation', ... -> 'validate'; unknown names are kept (lower-cased)."""
    key = str(split).strip().lower()
    return SPLIT_ALIASES.get(key, key)


def shard_file_name(split: str, index: int, count: int) -> str:
    """'train', 0, 4 -> 'train-00000-of-00004.array_record'."""
    return f"{canonical_split(split)}-{index:05d}-of-{count:05d}.array_record"


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def _array(value: np.ndarray) -> dict:
    value = np.asarray(value)
    return {"dtype": value.dtype.str, "shape": list(value.shape), "values": value.tolist()}


def _from_array(spec: dict, name: str, where: str) -> np.ndarray:
    try:
        dtype = np.dtype(spec["dtype"])
        if dtype.kind not in "biuf":
            raise TypeError(f"dtype {dtype} is not a boolean or numeric type")
        return np.array(spec["values"], dtype=dtype).reshape(spec["shape"])
    except (KeyError, TypeError, ValueError) as error:
        raise ExampleError(f"{where}: field {name!r} is not a valid array "
                          f"{{dtype, shape, values}}: {error}") from error


def encode_example(example: Example, *, compress_level: int = 6) -> bytes:
    """One Example -> one record: length-prefixed JSON header + PNG of the uint8 [H, W] image."""
    image = np.asarray(example.image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"example {example.source}:{example.example_id}: image must be uint8 "
                         f"[H, W], got {image.dtype} {image.shape}")
    header = {
        "example_id": str(example.example_id), "report": example.report,
        "captions": list(example.captions), "source": example.source, "view": example.view,
        "image_shape": list(image.shape),
        **{name: _array(getattr(example, name)) for name in _ARRAY_FIELDS},
    }
    header_bytes = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG", compress_level=compress_level)  # mode L
    return _HEADER_LENGTH.pack(len(header_bytes)) + header_bytes + png.getvalue()


def _split_record(record: bytes, where: str) -> tuple[dict, memoryview]:
    view = memoryview(record)
    if len(view) < _HEADER_LENGTH.size:
        raise ExampleError(f"{where}: record of {len(view)} bytes is too short")
    (length,) = _HEADER_LENGTH.unpack_from(view)
    end = _HEADER_LENGTH.size + length
    try:
        header = json.loads(bytes(view[_HEADER_LENGTH.size:end]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExampleError(f"{where}: record header is not UTF-8 JSON: {error}") from error
    return header, view[end:]


def decode_texts(record: bytes, where: str = "record") -> tuple[str, tuple]:
    """(report, captions) of a record without decoding its image."""
    header, _ = _split_record(record, where)
    try:
        return header["report"], tuple(header["captions"])
    except KeyError as error:
        raise ExampleError(f"{where}: record header has no field {error}") from error


def decode_example(record: bytes, where: str = "record") -> Example:
    """A record written by ``encode_example`` -> the same Example.

    Raises ImageDecodeError (naming ``where``) for a record whose image cannot be decoded and
    ExampleError for one whose header is broken; the pipeline skips and counts either.
    """
    header, png = _split_record(record, where)
    try:
        with Image.open(io.BytesIO(png)) as decoded:
            decoded.load()
            if decoded.mode != "L":
                raise ValueError(f"image mode is {decoded.mode}, expected 8-bit grayscale 'L'")
            image = np.asarray(decoded, np.uint8)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"{where}: cannot decode the record's PNG image: {error}") from error
    try:
        if list(image.shape) != header["image_shape"]:
            raise ImageDecodeError(f"{where}: image is {list(image.shape)}, header says "
                                   f"{header['image_shape']}")
        arrays = {name: _from_array(header[name], name, where) for name in _ARRAY_FIELDS}
        return Example(example_id=header["example_id"], image=image, report=header["report"],
                       captions=tuple(header["captions"]), source=header["source"],
                       view=header["view"], **arrays)
    except KeyError as error:
        raise ExampleError(f"{where}: record header has no field {error}; expected the fields "
                          f"written by encode_example (format version {VERSION})") from error


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class SplitWriter:
    """Writes one split's examples into ``num_shards`` shards of consecutive examples.

    ``write(example, position)`` puts the example at ``position`` (0 <= position < ``total``, the
    source's length) into shard ``position * num_shards // total``, so every shard holds a
    consecutive run of the source; positions that are never written (skipped examples) simply
    leave the shard shorter. ``close()`` returns the split's metadata entry.
    """

    def __init__(self, directory: str, split: str, num_shards: int, total: int):
        from array_record.python.array_record_module import ArrayRecordWriter

        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.split = canonical_split(split)
        self.total = max(int(total), 1)
        self.files = [shard_file_name(self.split, i, num_shards) for i in range(num_shards)]
        self.counts = [0] * num_shards
        self._writers = [ArrayRecordWriter(os.path.join(directory, name), WRITER_OPTIONS)
                         for name in self.files]

    def write(self, example: Example, position: int) -> None:
        self.write_record(encode_example(example), position)

    def write_record(self, record: bytes, position: int) -> None:
        """Write an already encoded record (``encode_example``) at ``position``."""
        shard = min(position * len(self.files) // self.total, len(self.files) - 1)
        self._writers[shard].write(record)
        self.counts[shard] += 1

    def close(self) -> dict:
        for writer in self._writers:
            writer.close()
        self._writers = []
        return {"num_examples": sum(self.counts),
                "shards": [{"file": f, "num_examples": n}
                           for f, n in zip(self.files, self.counts)]}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._writers:
            self.close()


def write_metadata(directory: str, source: str, label_names, splits: dict, **extra) -> str:
    """Write ``directory/metadata.json`` (last, so a partly written copy has none)."""
    metadata = {"format": FORMAT, "version": VERSION, "source": source,
                "label_names": list(label_names), "record": "uint32 LE header length, JSON "
                "header (example fields), PNG image (8-bit grayscale)", "splits": splits, **extra}
    path = os.path.join(directory, METADATA_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=1, ensure_ascii=False)
    os.replace(path + ".tmp", path)
    return path


def read_metadata(directory: str) -> dict:
    """``directory/metadata.json`` checked for format and version; SourceError otherwise."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise SourceError(f"dataset directory not found: {directory}; expected {LAYOUT}")
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        raise SourceError(f"required file not found: {path}; expected {LAYOUT}")
    try:
        with open(path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SourceError(f"{path} is not readable JSON ({error}); expected {LAYOUT}") from error
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found != FORMAT:
        raise SourceError(f"{path}: format is {found!r}, expected {FORMAT!r} ({LAYOUT})")
    if not isinstance(metadata.get("version"), int) or metadata["version"] > VERSION:
        raise SourceError(f"{path}: format version {metadata.get('version')!r} is newer than "
                          f"this reader's version {VERSION}; update rmc_jax")
    for key in ("source", "label_names", "splits"):
        if key not in metadata:
            raise SourceError(f"{path}: key {key!r} is missing; expected {LAYOUT}")
    return metadata


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class ArrayRecordSource(Source):
    """One split of a prepared ArrayRecord copy, as the Examples that were written.

    Args:
      root: the prepared directory (``DIR`` above).
      split: 'train', 'validate' (or 'val', 'valid', 'validation'), 'test', 'all'; whatever the
        copy holds (``metadata.json`` lists them).

    ``name`` and ``label_names`` are those of the source the copy was prepared from. Shards are
    opened lazily, once per process (readers are not pickled into Grain worker processes), and
    read concurrently by the pipeline's threads.
    """

    name = "array_record"

    def __init__(self, root, split: str = "train"):
        self.root = os.fspath(root) if root is not None else ""
        if not self.root:
            raise SourceError(f"no dataset directory given; expected {LAYOUT}")
        self.metadata = read_metadata(self.root)
        self.name = str(self.metadata["source"])
        self.label_names = tuple(self.metadata["label_names"])
        self.split = canonical_split(split)
        meta_path = os.path.join(self.root, METADATA_FILE)
        splits = self.metadata["splits"]
        if self.split not in splits:
            raise SourceError(f"split {split!r} is not in {meta_path}; it holds "
                              f"{sorted(splits) or 'no splits'}")
        shards = splits[self.split].get("shards", [])
        self.paths = [os.path.join(self.root, s["file"]) for s in shards]
        self.shard_counts = [int(s["num_examples"]) for s in shards]
        for path in self.paths:
            if not os.path.isfile(path):
                raise SourceError(f"shard file not found: {path} (listed in {meta_path}); "
                                  f"expected {LAYOUT}")
        self._ends = np.cumsum(self.shard_counts).tolist()
        self._size = self._ends[-1] if self._ends else 0
        self._readers = [None] * len(self.paths)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def split_sizes(self) -> dict:
        return {name: int(entry.get("num_examples", 0))
                for name, entry in self.metadata["splits"].items()}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_readers"] = [None] * len(self.paths)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _reader(self, shard: int):
        reader = self._readers[shard]
        if reader is not None:
            return reader
        with self._lock:
            if self._readers[shard] is None:
                from array_record.python.array_record_module import ArrayRecordReader

                path = self.paths[shard]
                try:
                    reader = ArrayRecordReader(path, READER_OPTIONS)
                except (OSError, RuntimeError, ValueError) as error:
                    raise SourceError(f"cannot open shard {path}: {error}; expected "
                                      f"{LAYOUT}") from error
                if reader.num_records() != self.shard_counts[shard]:
                    raise SourceError(f"shard {path} holds {reader.num_records()} records, "
                                      f"{METADATA_FILE} says {self.shard_counts[shard]}")
                self._readers[shard] = reader
            return self._readers[shard]

    def _record(self, index: int) -> tuple[bytes, str]:
        position = self._position(index)
        shard = bisect.bisect_right(self._ends, position)
        offset = position - (self._ends[shard - 1] if shard else 0)
        where = f"{self.paths[shard]} record {offset}"
        try:
            return self._reader(shard).read([offset])[0], where
        except (RuntimeError, OSError, ValueError) as error:  # riegeli: "Corrupted ... hash"
            raise ExampleError(f"{where}: cannot read the record: {error}") from error

    def __getitem__(self, index: int) -> Example:
        return decode_example(*self._record(index))

    def texts(self, index: int) -> tuple[str, tuple]:
        """(report, captions) of example ``index`` without decoding its image."""
        return decode_texts(*self._record(index))

    def close(self) -> None:
        with self._lock:
            for reader in self._readers:
                if reader is not None:
                    reader.close()
            self._readers = [None] * len(self.paths)
