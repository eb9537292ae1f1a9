"""Entry point: ``python -m rmc_jax.main --config=configs/base.py:roi [--workdir=DIR]``.

Starts ``jax.distributed`` when launched as several processes, then trains (resuming from the
latest checkpoint in the workdir). Without ``--workdir`` the run goes to
``./runs/<variant>-<timestamp>``.
"""

from __future__ import annotations

import datetime
import os

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "configs/base.py:VARIANT[,key=value]",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and reports go")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train (then evaluate), or evaluate the latest checkpoint in --workdir")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs "
                    "outside TPU pods / SLURM, where JAX cannot discover it)")
flags.DEFINE_integer("num_processes", None, "number of processes (with coordinator_address)")
flags.DEFINE_integer("process_id", None, "this process's index (with coordinator_address)")
FLAGS = flags.FLAGS


def default_workdir(variant: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{variant}-{stamp}")


def maybe_initialize_distributed():
    """Join the other processes of a multi-process run (no-op for a single process)."""
    import jax

    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS",
                                       "OMPI_COMM_WORLD_SIZE")):
        jax.distributed.initialize()  # cluster auto-detection


def main(argv):
    del argv
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/base.py:roi")
    logging.set_verbosity(logging.WARNING)  # Orbax/Grain INFO lines would bury the progress
    maybe_initialize_distributed()
    from rmc_jax import train  # after jax.distributed, which must come before any JAX work

    if FLAGS.mode == "eval":
        if not FLAGS.workdir:
            raise app.UsageError("--mode=eval needs --workdir=DIR of a training run")
        from rmc_jax import evaluate, pretrained

        # A run (or a converted model) whose towers were imported: rebuild that architecture.
        config = pretrained.resolve_config(config, workdir=FLAGS.workdir)
        results = evaluate.evaluate_checkpoint(config, FLAGS.workdir)
        print(f"{evaluate.summary(results)}\nresults: "
              f"{os.path.abspath(os.path.join(FLAGS.workdir, 'eval', 'results.json'))}")
        return
    workdir = FLAGS.workdir or default_workdir(config.variant)
    print(f"rmc_jax: variant '{config.variant}', workdir {os.path.abspath(workdir)}", flush=True)
    result = train.train(config, workdir)
    print(f"checkpoints: {result['checkpoint_dir']}\n"
          f"metrics:     {os.path.abspath(os.path.join(workdir, 'metrics.jsonl'))}", flush=True)
    if result["eval"] is not None:
        print(f"results:     {os.path.abspath(os.path.join(workdir, 'eval', 'results.json'))}",
              flush=True)
        report = os.path.join(workdir, "eval", "report.md")
        if os.path.exists(report):
            print(f"report:      {os.path.abspath(report)}", flush=True)


if __name__ == "__main__":
    app.run(main)
