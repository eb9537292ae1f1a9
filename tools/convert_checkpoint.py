"""Convert a pretrained model directory into an rmc_jax checkpoint (Orbax), offline.

    python tools/convert_checkpoint.py SRC DST [--towers=image,text] [--text_pooling=mean]

SRC: 'hf:/path' (Hugging Face CLIPModel, or a BERT-family model: text tower only),
'open_clip:/path' (open_clip_config.json + weights, e.g. BiomedCLIP), or a bare path (format
detected from its files). DST: a new directory that afterwards holds

    DST/checkpoints/0/      {'step': 0, 'params': the full RegionCLIP params}
    DST/model_config.json   the model's architecture (what rmc_jax rebuilds it from)
    DST/tokenizer.json      the model's tokenizer, when SRC has one

Towers that SRC does not provide (e.g. the image tower of a BERT) and the region head keep a
seeded random init. Prints every tensor mapped (per-layer lines folded) and every tensor
skipped with the reason; a tensor that is missing, unmapped, or of another shape than the
config implies stops the conversion with an error naming it (and both shapes).

Then: ``--config.init.image=rmc:DST`` / ``--config.init.text=rmc:DST`` to start a run from it
without PyTorch, ``--mode=eval --workdir=DST`` to evaluate it zero-shot, or
``--config.teacher.source=hf --config.teacher.path=rmc:DST`` to distil from it.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def convert(src: str, dst: str, *, towers=None, text_pooling: str | None = None, seed: int = 0,
            verbose: bool = False) -> dict:
    """Convert ``src`` into ``dst``; returns {'imported', 'model', 'checkpoint'}."""
    import jax

    from rmc_jax import pretrained
    from rmc_jax.data.tokenizer import load_tokenizer
    from rmc_jax.models import build_model, init_params
    from rmc_jax.pretrained import converted
    from rmc_jax.pretrained.mapping import flatten, unflatten

    if towers is None:
        described = pretrained.describe(src, ("text",) if _is_text_only(src) else
                                        ("image", "text"), text_pooling=text_pooling)
        towers = described.towers
    imported = pretrained.load(src, towers, text_pooling=text_pooling)
    image = imported if "image" in towers else None
    text = imported if "text" in towers else None
    model_cfg = pretrained.model_config_from(image, text)
    flat = pretrained.imported_params(image, text, model_cfg)
    pretrained.check_params(flat, model_cfg, src)
    params = flatten(jax.device_get(init_params(build_model(model_cfg), jax.random.key(seed))))
    params.update(flat)
    tokenizer = None
    if imported.tokenizer and text is not None:
        tokenizer = load_tokenizer(imported.tokenizer, model_cfg.text.max_len)
    directory = converted.save(dst, model_cfg, unflatten(params), tokenizer_object=tokenizer,
                               imported=True, source=src, towers=list(towers),
                               init={"image": src if image else "", "text": src if text else ""},
                               tokenizer="")
    print(imported.summary(compact=not verbose))
    kept = sorted({k.split("/")[0] for k in params} - {k.split("/")[0] for k in flat})
    print(f"random init (not in {src}): {', '.join(kept) or '-'}")
    if "region_proj/kernel" in flat:
        print("region_proj: starts as a copy of the image projection")
    print(f"wrote {directory} (step 0), {os.path.join(dst, converted.RUN_CONFIG_FILE)}"
          + (f", {os.path.join(dst, 'tokenizer.json')}" if tokenizer else ""))
    return {"imported": imported, "model": model_cfg, "checkpoint": directory}


def _is_text_only(src: str) -> bool:
    from rmc_jax.pretrained import importer

    fmt, directory = importer.parse_spec(src)
    return fmt == "hf" and importer._hf_kind(directory) == "hf_bert"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="'hf:/path', 'open_clip:/path' or a model directory")
    parser.add_argument("dst", help="new directory for the rmc_jax checkpoint")
    parser.add_argument("--towers", default="", help="'image', 'text' or 'image,text' "
                        "(default: every tower SRC has)")
    parser.add_argument("--text_pooling", default="", help="BERT text towers: cls, mean or "
                        "pooler (default: the model's own)")
    parser.add_argument("--seed", type=int, default=0, help="init of what SRC does not provide")
    parser.add_argument("--verbose", action="store_true", help="one line per tensor")
    args = parser.parse_args(argv)
    from rmc_jax.pretrained import WeightMappingError

    towers = tuple(t for t in args.towers.split(",") if t) or None
    try:
        convert(args.src, args.dst, towers=towers, text_pooling=args.text_pooling or None,
                seed=args.seed, verbose=args.verbose)
    except (WeightMappingError, FileNotFoundError, FileExistsError, ValueError,
            ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
