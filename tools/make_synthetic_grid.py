"""Draw a grid of synthetic examples with their boxes and captions.

    python tools/make_synthetic_grid.py [--out docs/synthetic_grid.png] [--n 12] [--cols 4]
        [--split train] [--seed 0] [--start 0] [--image_size 256] [--abnormal]

Each panel shows one ``SyntheticSource`` example: the radiograph, one coloured box per region and
the region captions underneath (patient's right is on the image left).  ``--abnormal`` skips
normal examples so every panel has something to look at.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rmc_jax.data.schema import FINDINGS  # noqa: E402
from rmc_jax.data.synthetic import SyntheticSource  # noqa: E402

_COLOURS = {
    "nodule": "#ff595e", "mass": "#ff924c", "consolidation": "#ffca3a", "atelectasis": "#8ac926",
    "pleural_effusion": "#1982c4", "pneumothorax": "#6a4c93", "cardiomegaly": "#f15bb5",
    "edema": "#00f5d4",
}
_FINDINGS = tuple(_COLOURS)


def pick_examples(source, n, start=0, abnormal=False):
    out, i = [], start
    while len(out) < n and i < len(source):
        ex = source[i]
        i += 1
        if abnormal and ex.num_regions == 0:
            continue
        out.append(ex)
    return out


def _palette_image(grey_levels=96):
    """Palette: the box colours, black and white, then a grey ramp for the radiographs."""
    colours = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in _COLOURS.values()]
    colours += [(0, 0, 0), (255, 255, 255)]
    # pale versions of the box colours (caption backgrounds)
    colours += [tuple(int(255 - 0.3 * (255 - x)) for x in c) for c in colours[:len(_COLOURS)]]
    ramp = [(g, g, g) for g in np.linspace(0, 255, grey_levels).astype(int)]
    flat = [x for c in colours + ramp for x in c]
    pal = Image.new("P", (1, 1))
    pal.putpalette(flat)
    return pal


def draw_grid(examples, path, cols=4, max_bytes=400_000):
    """Draw the examples with boxes and captions; write an indexed-colour PNG to ``path``."""
    rows = int(np.ceil(len(examples) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 4.6 * rows), dpi=100)
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, ex in zip(axes, examples):
        h, w = ex.image.shape
        ax.imshow(ex.image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        lines = []
        for box, cap, fid in zip(ex.boxes, ex.captions, ex.finding_ids):
            colour = _COLOURS.get(FINDINGS[fid], "#ffffff")
            x0, y0, x1, y1 = box * np.array([w, h, w, h])
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.4,
                                       ec=colour))
            lines.append((cap, colour))
        if not lines:
            lines = [("normal (no finding)", "#ffffff")]
        ax.set_title(ex.example_id, fontsize=7, pad=2)
        y = -0.015
        for cap, colour in lines:
            wrapped = textwrap.fill(cap, 42)
            ax.text(0.0, y, wrapped, transform=ax.transAxes, fontsize=6.5, va="top",
                    color="black", bbox=dict(fc=colour, alpha=0.3, lw=0, pad=0.6))
            y -= 0.05 * (wrapped.count("\n") + 1) + 0.012
        ax.text(0.01, 0.99, "R", transform=ax.transAxes, color="yellow", fontsize=7, va="top")
        ax.text(0.99, 0.99, "L", transform=ax.transAxes, color="yellow", fontsize=7, va="top",
                ha="right")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.98, bottom=0.01, wspace=0.04, hspace=0.34)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    # An indexed palette (box colours + a grey ramp) keeps the file small and the colours exact;
    # fewer grey levels if the film grain still makes it too big.
    for levels in (128, 96, 64, 48):
        indexed = image.quantize(palette=_palette_image(levels), dither=Image.Dither.NONE)
        indexed.save(path, optimize=True)
        if os.path.getsize(path) <= max_bytes:
            break
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/synthetic_grid.png")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--abnormal", action="store_true")
    args = parser.parse_args(argv)
    source = SyntheticSource(split=args.split, seed=args.seed, image_size=args.image_size)
    examples = pick_examples(source, args.n, args.start, args.abnormal)
    path = draw_grid(examples, args.out, cols=args.cols)
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KB, {len(examples)} examples)")


if __name__ == "__main__":
    main()
