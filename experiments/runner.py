"""One training + evaluation run of ``rmc_jax.main`` in its own workdir, for the sweep scripts
(ablation.py, recipes.py): a finished run (one with ``eval/results.json``) is reused, so an
interrupted sweep continues where it stopped; the run's output goes to ``log.txt`` beside it and
its wall time to ``wall_seconds.txt``."""

from __future__ import annotations

import json
import math
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
        start = time.perf_counter()
        if not _launch(command, os.path.join(workdir, "log.txt"), name, results_path):
            return {}
        with open(os.path.join(workdir, "wall_seconds.txt"), "w") as f:
            f.write(f"{time.perf_counter() - start:.1f}\n")
    print(f"{name}: done", flush=True)
    return _results(workdir)


def evaluate_again(command: list[str], workdir: str, name: str) -> dict:
    """Runs ``command`` (an ``--mode=eval`` of the finished run in ``workdir``; its output goes
    to ``eval_log.txt``): the new results.json, with the training run's ``run/wall_seconds``, or
    {} when the evaluation failed (said on stdout)."""
    if not _launch(command, os.path.join(workdir, "eval_log.txt"), name,
                   os.path.join(workdir, "eval", "results.json")):
        return {}
    print(f"{name}: evaluated", flush=True)
    return _results(workdir)


def _launch(command: list[str], log_path: str, name: str, expected: str) -> bool:
    """Runs ``command`` with its output in ``log_path``: whether it exited 0 and wrote
    ``expected`` (a file left by an earlier command does not count; else it says so on
    stdout)."""
    print(f"{name}: $ {' '.join(command)}", flush=True)
    started = math.floor(time.time())  # file systems may keep whole seconds only
    with open(log_path, "w") as log:
        status = subprocess.run(command, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT).returncode
    written = os.path.exists(expected) and os.path.getmtime(expected) >= started
    if status or not written:
        print(f"{name}: exit {status}{'' if written else f', {expected} not written'}; "
              f"see {log_path}", flush=True)
        return False
    return True


def _results(workdir: str) -> dict:
    """A finished run's results.json, with ``run/wall_seconds`` where measured."""
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        results = json.load(f)
    wall = os.path.join(workdir, "wall_seconds.txt")
    if os.path.exists(wall):
        results["run/wall_seconds"] = float(open(wall).read())
    return results
