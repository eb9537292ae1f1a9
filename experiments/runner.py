"""One training + evaluation run of ``rmc_jax.main`` in its own workdir, for the sweep scripts
(ablation.py, recipes.py): a finished run (one with ``eval/results.json``) is reused, so an
interrupted sweep continues where it stopped; the run's output goes to ``log.txt`` beside it and
its wall time to ``wall_seconds.txt``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(config: str, workdir: str, flags: list[str] = ()) -> list[str]:
    """``python -m rmc_jax.main`` on ``configs/base.py:<config>`` writing to ``workdir``."""
    return ([sys.executable, "-m", "rmc_jax.main",
             f"--config={os.path.join(REPO, 'configs', 'base.py')}:{config}",
             f"--workdir={workdir}", "--config.progress_bar=off"] + list(flags))


def finished(workdir: str) -> bool:
    """Whether ``workdir`` holds a finished run (its ``eval/results.json``)."""
    return os.path.exists(os.path.join(workdir, "eval", "results.json"))


def train_and_evaluate(command: list[str], workdir: str, name: str) -> dict:
    """Runs ``command`` unless ``workdir`` holds a finished run; its results.json (with
    ``run/wall_seconds`` where measured), or {} when the run failed (said on stdout)."""
    results_path = os.path.join(workdir, "eval", "results.json")
    if not finished(workdir):
        os.makedirs(workdir, exist_ok=True)
        print(f"{name}: $ {' '.join(command)}", flush=True)
        start = time.perf_counter()
        with open(os.path.join(workdir, "log.txt"), "w") as log:
            status = subprocess.run(command, cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT).returncode
        if status or not os.path.exists(results_path):
            print(f"{name}: exit {status}; see {workdir}/log.txt", flush=True)
            return {}
        with open(os.path.join(workdir, "wall_seconds.txt"), "w") as f:
            f.write(f"{time.perf_counter() - start:.1f}\n")
    with open(results_path) as f:
        results = json.load(f)
    wall = os.path.join(workdir, "wall_seconds.txt")
    if os.path.exists(wall):
        results["run/wall_seconds"] = float(open(wall).read())
    print(f"{name}: done", flush=True)
    return results
