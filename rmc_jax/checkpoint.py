"""Orbax checkpoints of the train state together with the Grain iterator state.

One ``CheckpointManager`` per workdir (``<workdir>/checkpoints``): asynchronous saves every
``save_every`` steps, the last ``keep`` kept, a forced save on preemption, restore against an
abstract state carrying the target shardings (a 1-device checkpoint restores on 8 devices and
back). Nothing is pickled: arrays go through Orbax's array format, the iterator state through
Grain's JSON handler, the run's counters (``counters``: e.g. the bad examples skipped so far,
so that a resumed run keeps its totals) through Orbax's JSON handler.

Arrays replicated over several devices are written whole from one replica when the run is one
process. Orbax's replica-parallel saving (each replica writes a slice) pays off only when the
replicas sit on different hosts; within a process it slices every parameter per device with
eager ops (a small compile per slice shape), about 5 s of each save of the smallest model on
8 CPU devices. Orbax's own option path (``register_standard_handlers_with_options``) builds
its handlers the same way, without the per-array metadata store of its global default.
"""

from __future__ import annotations

import json
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, workdir: str, save_every: int, keep: int):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(save_interval_steps=max(save_every, 1),
                                               max_to_keep=keep, create=True,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "counters"),
            item_handlers={"state": ocp.PyTreeCheckpointHandler(
                               type_handler_registry=_array_handlers()),
                           "data": grain.checkpoint.CheckpointHandler(),
                           "counters": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator=None, *, counters=None,
             force: bool = False) -> bool:
        """Save if ``step`` is due (or ``force``); returns whether a save started.
        ``counters``: a JSON-able dict, or a function returning one (called only when the
        save is due: it may gather figures from every process)."""
        if not (force or self.manager.should_save(step)):
            return False
        items = {"state": ocp.args.PyTreeSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if counters is not None:
            items["counters"] = ocp.args.JsonSave(counters() if callable(counters) else counters)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore_counters(self, step: int | None = None) -> dict:
        """The counters saved with ``step`` (default: latest); {} when it has none."""
        step = self.manager.latest_step() if step is None else step
        if step is None or not os.path.isdir(os.path.join(self.directory, str(step),
                                                          "counters")):
            return {}
        restored = self.manager.restore(
            step, args=ocp.args.Composite(counters=ocp.args.JsonRestore()))
        return dict(restored["counters"] or {})

    def restore(self, abstract_state, data_iterator=None, step: int | None = None):
        """Restore ``step`` (default: latest) into arrays shaped and sharded like
        ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with shardings); the iterator,
        if given, is moved to the saved position in place."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"state": ocp.args.PyTreeRestore(
            abstract_state,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))}
        if data_iterator is not None:
            self._check_input_workers(step, data_iterator)
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def _data_state_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step), "data",
                            f"process_{jax.process_index()}-of-{jax.process_count()}.json")

    def saved_input_workers(self, step: int | None = None) -> int | None:
        """``data.workers`` of the pipeline whose position ``step`` (default: latest) saved;
        None without a checkpoint or a saved position."""
        step = self.manager.latest_step() if step is None else step
        if step is None or not os.path.exists(self._data_state_path(step)):
            return None
        with open(self._data_state_path(step)) as handle:
            return input_workers(json.load(handle))

    def _check_input_workers(self, step: int, data_iterator) -> None:
        """Fail with the fix when the saved input position came from a pipeline with another
        number of worker processes: each worker reads its own slice of the data, so the
        order of examples (and the saved state's layout) depends on that number."""
        path = self._data_state_path(step)
        saved = self.saved_input_workers(step)
        if saved is None:
            return
        current = input_workers(data_iterator.get_state())
        if saved != current:
            raise ValueError(
                f"cannot resume the input pipeline from {path}: it was saved with "
                f"data.workers={saved} and this run has data.workers={current}. Each worker "
                f"reads its own slice of the data, so the order of examples depends on the "
                f"number of workers: resume with --config.data.workers={saved}, or train in "
                f"a new workdir")

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait_until_finished(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def _array_handlers():
    """Orbax's handlers for what a train state holds, replica-parallel only across processes."""
    return ocp.type_handlers.create_type_handler_registry(
        (jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=jax.process_count() > 1)),
        (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (np.number, ocp.type_handlers.ScalarHandler()),
        (int, ocp.type_handlers.ScalarHandler()),
        (float, ocp.type_handlers.ScalarHandler()))


def abstract_like(tree):
    """Shape/dtype/sharding skeleton of a tree of arrays, as restore targets."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


def input_workers(iterator_state: dict) -> int:
    """Number of input worker processes (``data.workers``) of a pipeline, read from its Grain
    iterator state: ``prefetch`` interleaves one iterator per worker; 0 without workers."""
    per_worker = iterator_state.get("iterators_in_use_states")
    return len(per_worker) if isinstance(per_worker, list) else 0
