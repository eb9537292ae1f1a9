"""Where training metrics go: JSON lines, TensorBoard event files and the console.

``SummaryWriter(workdir)`` fans one ``write(step, metrics)`` out to
  * ``<workdir>/metrics.jsonl``: one JSON object per logged step (the machine-readable record);
  * ``<workdir>/tensorboard/events.out.tfevents.*``: scalar summaries TensorBoard reads, written
    here directly (TFRecord framing + a hand-encoded ``Event`` protobuf), so no TensorFlow is
    needed;
  * the console: a progress bar with ETA redrawn in place when stdout is a terminal, plain
    ``[step N/T] key=value`` lines otherwise (logs, batch jobs); metrics named with one of
    ``console_exclude``'s prefixes (diagnostics such as per-tower norms) stay out of them.
Only process 0 writes.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

# ---- TensorBoard event files -------------------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord framing uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the payload, its masked CRC (little endian)."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc(length)) + data
            + struct.pack("<I", _masked_crc(data)))


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 fields encode negatives as 10-byte two's complement
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def event_proto(wall_time: float, step: int, *, file_version: str | None = None,
                scalars: dict | None = None) -> bytes:
    """A serialized ``tensorflow.Event``: wall_time (1, double), step (2, int64),
    file_version (3, string) and/or summary (5) holding ``Summary.Value``s with tag (1) and
    simple_value (2, float)."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode())
                              + _field(2, 5, struct.pack("<f", float(value))))
            for tag, value in scalars.items())
        out += _length_delimited(5, values)
    return out


class EventFileWriter:
    """Appends scalar summaries to a new ``events.out.tfevents.<time>.<host>`` file."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "ab")
        self._file.write(tfrecord(event_proto(time.time(), 0, file_version="brain.Event:2")))
        self._file.flush()

    def scalars(self, step: int, values: dict) -> None:
        self._file.write(tfrecord(event_proto(time.time(), step, scalars=values)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ---- console -----------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class ProgressBar:
    """``step 120/400 [======>          ] 30% 24.1 ex/s ETA 3m20s loss=2.31``, redrawn in place.

    The ETA is the remaining steps at the step rate measured since the bar started (after the
    first update, so compilation does not count).
    """

    def __init__(self, total_steps: int, stream=None, width: int = 24):
        self.total, self.width = total_steps, width
        self.stream = stream or sys.stdout
        self._start = None  # (time, step) at the first update
        self._metrics: dict = {}

    def eta(self, step: int, now: float) -> float | None:
        if self._start is None or step <= self._start[1]:
            return None
        rate = (step - self._start[1]) / max(now - self._start[0], 1e-9)
        return (self.total - step) / rate

    def line(self, step: int, metrics: dict, now: float) -> str:
        done = min(step / max(self.total, 1), 1.0)
        filled = int(done * self.width)
        bar = "=" * filled + (">" if filled < self.width else "") + " " * (
            self.width - filled - 1)
        eta = self.eta(step, now)
        parts = [f"step {step}/{self.total} [{bar}] {done:4.0%}"]
        if "examples_per_second" in metrics:
            parts.append(f"{metrics['examples_per_second']:.1f} ex/s")
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA --")
        loss = metrics.get("total", metrics.get("loss"))  # the trainer calls the sum 'total'
        if loss is not None:
            parts.append(f"loss={loss:.4g}")
        return " ".join(parts)

    def update(self, step: int, metrics: dict | None = None) -> None:
        """Redraw at ``step``; ``metrics`` (when given) replace the figures shown."""
        now = time.perf_counter()
        if self._start is None:
            self._start = (now, step)
        if metrics is not None:
            self._metrics = metrics
        self.stream.write("\r" + self.line(step, self._metrics, now) + "\x1b[K")
        self.stream.flush()

    def finish(self) -> None:
        if self._start is not None:
            self.stream.write("\n")
            self.stream.flush()
            self._start = None


def log_line(step: int, total_steps: int, metrics: dict) -> str:
    shown = " ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())
    return f"[step {step}/{total_steps}] {shown}"


# ---- all of them -------------------------------------------------------------------------------


class SummaryWriter:
    """JSONL + TensorBoard + console for one run (a no-op on processes other than 0).

    ``progress=None`` draws the bar when stdout is a terminal; with the bar, the detailed
    ``[step]`` lines go to the JSONL and TensorBoard only, so the terminal stays readable.
    Metrics whose names start with a prefix in ``console_exclude`` go to the JSONL and
    TensorBoard only.
    """

    def __init__(self, workdir: str, total_steps: int, *, enabled: bool = True,
                 tensorboard: bool = True, progress: bool | None = None,
                 console_exclude: tuple[str, ...] = ()):
        self.enabled = enabled
        self.total_steps = total_steps
        self.console_exclude = tuple(console_exclude)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = open(self.path, "a") if enabled else None
        self._events = (EventFileWriter(os.path.join(workdir, "tensorboard"))
                        if enabled and tensorboard else None)
        if progress is None:
            progress = sys.stdout.isatty()
        self._bar = ProgressBar(total_steps) if enabled and progress else None

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        if self._events:
            self._events.scalars(step, values)
        shown = {k: v for k, v in values.items() if not k.startswith(self.console_exclude)}
        if self._bar:
            self._bar.update(step, shown)
        else:
            print(log_line(step, self.total_steps, shown), flush=True)

    def tick(self, step: int) -> None:
        """Every step: move the bar (no metrics are read, so the host never waits)."""
        if self.enabled and self._bar:
            self._bar.update(step)

    def message(self, text: str) -> None:
        """A line that must not be overwritten by the bar (evaluation results, notices)."""
        if not self.enabled:
            return
        if self._bar:
            self._bar.finish()
        print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar:
            self._bar.finish()
        self._jsonl.close()
        if self._events:
            self._events.close()
