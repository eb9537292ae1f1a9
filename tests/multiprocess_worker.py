"""One process of the 2-process training tests (run by test_multiprocess.py, not by pytest).

    multiprocess_worker.py COORDINATOR PROCESS_ID OUT_JSON STEPS [smoke | b16 DEPTH]

'smoke': the smoke model, two CPU devices per process; 'b16': configs/b16.py:global with
DEPTH layers per tower at 64 px, 16 text tokens (tests/test_b16.py's tiny-batch setup), one
CPU device per process.
"""

import json
import os
import sys

MODEL = sys.argv[5] if len(sys.argv) > 5 else "smoke"
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count="
                           + ("1" if MODEL == "b16" else "2"))
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402


def main(coordinator: str, process_id: int, out_path: str, steps: int):
    jax.distributed.initialize(coordinator, 2, process_id)
    sys.path.insert(0, os.path.dirname(__file__))
    from test_train import _bookkeeping

    from rmc_jax import train

    if MODEL == "b16":
        from test_b16 import b16
        from test_train import fixed_batch_losses

        config = b16("global", depth=int(sys.argv[6]), res=64, text_len=16)
        losses = fixed_batch_losses(config, steps, mesh_devices=-1)
    else:
        from test_train import fixed_batch_losses, smoke

        losses = fixed_batch_losses(smoke(), steps, mesh_devices=-1)
    # Bad-example counts over both processes: a resumed total (5) and 1 + 2 new skips.
    counts = train.InputCounts({"bad_examples_total": 5, "bad_examples_seen": ["a[0]: x"]})
    counts.add(_bookkeeping([f"p[{process_id}]: bad"] * (process_id + 1)))
    logged = counts.log_metrics()
    if jax.process_index() == 0:
        with open(out_path, "w") as f:
            json.dump({"losses": losses, "counts": logged}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
