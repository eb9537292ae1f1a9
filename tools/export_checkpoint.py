"""Export a trained run's towers to safetensors that other tools read.

    python tools/export_checkpoint.py WORKDIR DST [--format=auto|hf|open_clip|rmc] [--step=N]

WORKDIR: a training workdir (or a directory written by tools/convert_checkpoint.py). DST gets:

  hf         a Hugging Face CLIPModel directory when both towers are CLIP towers (loads with
             transformers.CLIPModel.from_pretrained(DST)); a BERT text tower goes to DST/text as
             a BertModel directory (transformers.AutoModel / sentence-transformers)
  open_clip  open_clip_config.json + open_clip_model.safetensors (timm or open_clip ViT, BERT or
             open_clip text), the layout BiomedCLIP ships in
  auto       whichever of the above fits the architecture
and always rmc_jax_model.safetensors + rmc_jax_model.json with every parameter (region head
included) under its rmc_jax name. The tokenizer is copied next to the weights.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="training workdir or converted model directory")
    parser.add_argument("dst", help="output directory")
    parser.add_argument("--format", default="auto", choices=("auto", "hf", "open_clip", "rmc"))
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: "
                        "latest)")
    args = parser.parse_args(argv)
    from rmc_jax.pretrained.export import export_run

    try:
        written = export_run(args.workdir, args.dst, format=args.format, step=args.step)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for fmt, files in written.items():
        print(f"{fmt}: " + ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
