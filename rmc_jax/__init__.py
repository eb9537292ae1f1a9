"""rmc_jax: region-aware medical CLIP in JAX/Flax."""

__version__ = "0.1.0"
