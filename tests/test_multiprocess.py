"""Two CPU processes (jax.distributed on localhost) train like one process on the same batch,
and count bad examples over both."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(__file__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(tmp_path, steps: int, *model: str) -> dict:
    """{'losses': metrics of ``steps`` fixed-batch steps run by two worker processes together,
    'counts': bad-example counts logged over both}."""
    coordinator = f"localhost:{free_port()}"
    out = tmp_path / "losses.json"
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, ".."))
    env.pop("XLA_FLAGS", None)
    workers = [subprocess.Popen([sys.executable, os.path.join(HERE, "multiprocess_worker.py"),
                                 coordinator, str(i), str(out), str(steps), *model], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(x[-3000:] for x in logs)
    return json.loads(out.read_text())


def test_two_processes_match_one(tmp_path):
    from test_train import fixed_batch_losses, smoke

    steps = 3
    written = two_processes(tmp_path, steps)
    two = written["losses"]
    assert written["counts"] == {"bad_examples": 3, "bad_examples_total": 8,
                                 "regions_beyond_max_regions": 0, "regions_without_caption": 0}
    one = fixed_batch_losses(smoke(), steps, mesh_devices=1)
    for a, b in zip(one, two):
        for key in ("global", "roi", "neg", "distill", "total", "grad_norm"):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=key)


# ~70 s even at one layer: slow; test_two_processes_match_one covers two processes against one
# and test_b16 the B/16 config in one process.
@pytest.mark.slow
@pytest.mark.parametrize("depth", [1, 12])
def test_two_processes_match_one_b16(tmp_path, depth):
    """configs/b16.py (ViT-B/16 + BERT-base widths, heads and layouts; ``depth`` layers per
    tower, all 12 with -m slow; 64 px, 16 text tokens), global batch 2: one example per process
    equals both in one process, over two steps (the second after an AdamW update of every
    parameter). tests/test_b16.py trains the full-size model in one process."""
    from test_b16 import b16
    from test_train import fixed_batch_losses

    steps = 2
    two = two_processes(tmp_path, steps, "b16", str(depth))["losses"]
    one = fixed_batch_losses(b16("global", depth=depth, res=64, text_len=16), steps,
                             mesh_devices=1)
    assert len(one) == len(two) == steps
    for a, b in zip(one, two):
        for key in ("global", "total", "grad_norm"):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=key)
