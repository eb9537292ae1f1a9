"""Models: ViT image tower, text tower, RoIAlign region head, two-tower RegionCLIP; their
hyperparameters in ``config`` (one dataclass per tower and one for the model)."""

from rmc_jax.models.clip import (
    EMBEDDING_NORMS,
    RegionCLIP,
    RegionHead,
    build_model,
    example_inputs,
    init_params,
    l2_normalize,
)
from rmc_jax.models.config import ModelConfig, TextConfig, VisionConfig, model_config
from rmc_jax.models.layers import TransformerStack
from rmc_jax.models.roi import roi_align
from rmc_jax.models.text import TextTransformer
from rmc_jax.models.vit import VisionTransformer

__all__ = [
    "EMBEDDING_NORMS",
    "ModelConfig",
    "RegionCLIP",
    "RegionHead",
    "TextConfig",
    "TextTransformer",
    "TransformerStack",
    "VisionConfig",
    "VisionTransformer",
    "build_model",
    "example_inputs",
    "init_params",
    "l2_normalize",
    "model_config",
    "roi_align",
]
