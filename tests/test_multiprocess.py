"""Two CPU processes (jax.distributed on localhost) train like one process on the same batch,
and count bad examples over both."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(__file__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    from test_train import fixed_batch_losses, smoke

    steps = 3
    coordinator = f"localhost:{free_port()}"
    out = tmp_path / "losses.json"
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, ".."))
    env.pop("XLA_FLAGS", None)
    workers = [subprocess.Popen([sys.executable, os.path.join(HERE, "multiprocess_worker.py"),
                                 coordinator, str(i), str(out), str(steps)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    logs = [w.communicate(timeout=400)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(x[-3000:] for x in logs)
    written = json.loads(out.read_text())
    two = written["losses"]
    assert written["counts"] == {"bad_examples": 3, "bad_examples_total": 8,
                                 "regions_beyond_max_regions": 0, "regions_without_caption": 0}
    one = fixed_batch_losses(smoke(), steps, mesh_devices=1)
    for a, b in zip(one, two):
        for key in ("global", "roi", "neg", "distill", "total", "grad_norm"):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=key)
