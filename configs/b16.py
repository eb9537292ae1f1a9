"""BiomedCLIP-sized training: ``--config=configs/b16.py:VARIANT[,key=value,...]``.

The objectives and short arguments of ``configs/base.py`` (``roi``, ``global``, ``medclip``,
``roi_nodistill``, ``roi_noneg``; ``steps``, ``batch``, ``res``, ``seed``, ``lr``, ``dtype``)
with the towers of BiomedCLIP (open_clip
``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``):

  image  timm ViT-B/16 at 224 px: 768 wide, 12 layers, 12 heads, MLP 3072, pre-LN, exact GELU,
         LayerNorm eps 1e-6, class-token pooling, three input channels (a radiograph's gray
         channel replicated) normalised with OpenAI CLIP's mean/std as BiomedCLIP was trained
  text   PubMedBERT (BERT-base): vocabulary 30522, 768 wide, 12 layers, 12 heads, MLP 3072,
         post-LN, LayerNorm eps 1e-12, 512 position embeddings, token types, CLS pooling;
         reports read at BiomedCLIP's context length, 256 tokens
  shared 512-d embeddings; linear image projection and BiomedCLIP's MLP text projection
         (768 -> 640 -> 512), neither with a bias

Every parameter has the shape BiomedCLIP's weights give it, so
``--config.init.image=open_clip:/path/BiomedCLIP --config.init.text=open_clip:/path/BiomedCLIP``
starts both towers (and the temperature) from BiomedCLIP with no other flag, and a model
trained from scratch exports in BiomedCLIP's layout. Sized for one accelerator (batch 256);
``experiments/launch_gpus.sh`` and ``experiments/launch_tpu_pod.sh`` run it on many.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def _base():
    """configs/base.py, loaded by path (config files are loaded by path, not as a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py")
    spec = importlib.util.spec_from_file_location("rmc_jax_configs_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


base = _base()
VARIANTS = tuple(v for v in base.VARIANTS if v != "smoke")

# OpenAI CLIP's image statistics: BiomedCLIP's preprocess_cfg.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VISION = dict(image_size=224, channels=3, patch_size=16, width=768, depth=12, num_heads=12,
              mlp_ratio=4.0, mlp_dim=3072, activation="gelu", norm_position="pre",
              layer_norm_eps=1e-6, patch_bias=True, pre_norm=False, final_norm=True,
              class_token=True, pooling="cls", pixel_mean=CLIP_MEAN, pixel_std=CLIP_STD)
TEXT = dict(vocab_size=30522, width=768, depth=12, num_heads=12, mlp_ratio=4.0, mlp_dim=3072,
            max_len=512, causal=False, activation="gelu", norm_position="post",
            layer_norm_eps=1e-12, embed_norm=True, final_norm=False, type_vocab_size=2,
            pooling="cls")
CONTEXT_LENGTH = 256  # BiomedCLIP's text_cfg.context_length


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, overrides = base.parse_arg(arg or "roi")
    if variant not in VARIANTS:
        raise ValueError(f"configs/b16.py has no variant {variant!r}; choose one of {VARIANTS} "
                         "(the 'smoke' model is configs/base.py:smoke)")
    c = base.get_config(variant)
    c.variant = f"{variant}_b16"
    c.batch_size = 256
    c.model.vision.update(VISION)
    c.model.text.update(TEXT)
    c.model.update(embed_dim=512, image_proj_bias=False, text_proj_bias=False,
                   text_proj_hidden=(768 + 512) // 2)   # open_clip's 'mlp' projection size
    c.data.update(image_size=VISION["image_size"], max_text_len=CONTEXT_LENGTH)
    for path, value in overrides.items():
        base._set(c, path, value)
    return c
