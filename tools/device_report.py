"""experiments/device_check.sh's results as one Markdown block in BENCHMARKS.md.

    python tools/device_report.py OUT_DIR [--benchmarks BENCHMARKS.md] [--command "..."]

Reads what the script left in OUT_DIR (devices.txt, bench.md, train_summary.txt,
largest_batch.md; parts that did not run are left out) and writes them, under a heading with
the date, the device, the host and the versions of Python, jax, jaxlib, its accelerator plugin
and flax, to OUT_DIR/report.md and between the ``device_check.sh`` markers of BENCHMARKS.md
(appended the first time; ``tools/markdown_block.py``). The script calls it after each part,
so a run cut short still leaves the finished parts' report.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
KEY = "device_check.sh"


def versions() -> str:
    names = ["jax", "jaxlib", "flax"]
    names += sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                    if d.metadata["Name"] and d.metadata["Name"].lower().replace("_", "-")
                    .startswith(("jax-cuda", "libtpu")))
    found = []
    for name in dict.fromkeys(names):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found + [f"Python {platform.python_version()}"])


def report(out: str, command: str = "") -> str:
    def read(name):
        path = os.path.join(out, name)
        return open(path).read().strip() if os.path.isfile(path) else ""

    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"`{command or 'bash experiments/device_check.sh'}`, {now:%Y-%m-%d %H:%M} UTC: "
             f"{read('devices.txt') or 'devices unknown'}; host {platform.machine()} with "
             f"{os.cpu_count()} CPU cores; {versions()}.", ""]
    for name in ("bench.md", "train_summary.txt", "largest_batch.md"):
        text = read(name)
        if text:
            lines += [text, ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the script's output directory")
    parser.add_argument("--benchmarks", default=os.path.join(ROOT, "BENCHMARKS.md"),
                        help="the Markdown file to write the block into ('': none)")
    parser.add_argument("--command", default="", help="the command that ran, for the heading")
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from tools.markdown_block import replace_block

    text = report(args.out, args.command)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(text.strip() + "\n")
    if args.benchmarks:
        replace_block(args.benchmarks, KEY, text)
        print(f"device_report: wrote the {KEY} block of {args.benchmarks}")


if __name__ == "__main__":
    main()
