"""The README's code examples run as written."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def python_blocks():
    text = open(README).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def block(containing: str) -> str:
    """The README's Python block that contains ``containing``."""
    (found,) = [b for b in python_blocks() if containing in b]
    return found


def test_losses_examples_run():
    blocks = [block("def objective"), block("jax.shard_map")]
    namespace = {}
    exec(blocks[0], namespace)  # the losses in someone's own jax.jit
    assert np.isfinite(float(namespace["total"])) and set(namespace["logs"]) == {
        "global", "roi", "neg", "total"}
    assert namespace["grads"].shape == (32, 128)
    exec(blocks[1], namespace)  # the same loss sharded over the devices with the ring backend
    import rmc_jax.losses as L
    np.testing.assert_allclose(namespace["loss"], L.global_contrastive_loss(
        namespace["img"], namespace["txt"], 0.07), rtol=1e-5)


def test_prepared_copy_example_runs(tmp_path):
    """The 'At scale' example reads a copy that tools/prepare_data.py wrote (synthetic here) at
    a training resolution, as the README prepares it (raw images by default)."""
    import subprocess
    import sys

    tool = os.path.join(os.path.dirname(README), "tools", "prepare_data.py")
    subprocess.run([sys.executable, tool, "--source", "synthetic", "--data_dir", str(tmp_path),
                    "--name", "rmc_mimic_cxr", "--splits", "train,test", "--size", "2",
                    "--image_size", "128"],
                   check=True, capture_output=True)
    namespace = {}
    exec(block("tfds.data_source").replace("/data/tfds", str(tmp_path)), namespace)
    assert sorted(namespace["ds"]) == ["test", "train"]
    image = namespace["ex"]["image"]
    assert image.shape == (128, 128, 1) and image.dtype == np.uint8
    assert namespace["ex"]["regions"]["bbox"] is not None
