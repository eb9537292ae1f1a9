"""Throughput of a training run from its ``metrics.jsonl``: median examples/s and MFU.

    python tools/run_summary.py WORKDIR/metrics.jsonl [--skip 1]

The first ``--skip`` logged windows are left out (they include compilation and the input
pipeline's start-up); the rest give the median, min and max examples/s and MFU and the last
logged loss. Used by ``experiments/device_check.sh``; works on any run.
"""

from __future__ import annotations

import argparse
import json
import statistics


def summarize(path: str, skip: int = 1) -> dict:
    """{'windows', 'steps', 'examples_per_second': (median, min, max), 'mfu': ..., 'loss'}."""
    rows = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line:
                record = json.loads(line)
                if "examples_per_second" in record:
                    rows.append(record)
    if len(rows) <= skip:
        raise SystemExit(f"{path}: {len(rows)} logged training windows; need more than the "
                         f"{skip} skipped (run longer or log more often)")
    kept = rows[skip:]

    def spread(key):
        values = [r[key] for r in kept if r.get(key) is not None]
        return (statistics.median(values), min(values), max(values)) if values else None

    return {"windows": len(kept), "steps": kept[-1]["step"],
            "examples_per_second": spread("examples_per_second"), "mfu": spread("mfu"),
            "loss": kept[-1].get("total")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics")
    parser.add_argument("--skip", type=int, default=1, help="first logged windows left out")
    args = parser.parse_args(argv)
    s = summarize(args.metrics, args.skip)
    rate = s["examples_per_second"]
    line = (f"trainer: {s['windows']} windows to step {s['steps']}: examples/s median "
            f"{rate[0]:.1f} (min {rate[1]:.1f}, max {rate[2]:.1f})")
    if s["mfu"]:
        line += f", MFU median {100 * s['mfu'][0]:.1f}% (min {100 * s['mfu'][1]:.1f}%, " \
                f"max {100 * s['mfu'][2]:.1f}%)"
    if s["loss"] is not None:
        line += f", last loss {s['loss']:.3f}"
    print(line)


if __name__ == "__main__":
    main()
