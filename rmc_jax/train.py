"""The trainer: config -> data -> model -> sharded jitted steps -> checkpoints and metrics.

Read top to bottom: config checks, data, model and state, the train step, and the loop (resume,
logging, preemption, non-finite handling). The optimiser (towers, learning rates, freezing) is
``rmc_jax.optim``; the loss of one batch and the distillation teacher, ``rmc_jax.objective``.
One module of just over 500 lines on purpose: one run, read in the order it happens.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rmc_jax import checkpoint as ckpt
from rmc_jax import flops, losses, pretrained, summaries, text_pretrain
from rmc_jax import sharding as shd
from rmc_jax.data import pipeline as pipe
from rmc_jax.data import sources as data_sources
from rmc_jax.data.schema import is_no_finding
from rmc_jax.data.tokenizer import Tokenizer, tokenizer_for_run
from rmc_jax.models import RegionCLIP, build_model, example_inputs
from rmc_jax.models.layers import AUTO_DTYPE, canonical_dtype, fast_compute_dtype
from rmc_jax.objective import (GLOBAL_LOSSES, GLOBAL_POSITIVES, LOSS_TERMS, TEACHER_REGIONS,
                               TEACHER_SOURCES, batch_losses, no_finding_column,
                               region_teacher)
from rmc_jax.optim import TOWERS, frozen_towers, make_optimizer, tower_norms, tower_options

# Diagnostics the step logs to metrics.jsonl and TensorBoard, not to the console:
# param_norm/<tower> and update_norm/<tower> (TOWER_RULES' groups), and embedding_norm/image,
# /text (reports) and /regions, the norms of the projected embeddings before normalisation.
DIAGNOSTICS = ("param_norm/", "update_norm/", "embedding_norm/")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf."""


# =============================================================================================
# Config checks: fail before compiling, with one line that says what to change.
# =============================================================================================


def check_config(config: ml_collections.ConfigDict) -> None:
    def fail(message):
        raise ValueError(f"invalid config: {message}")

    for term in LOSS_TERMS:
        if config.loss[f"{term}_weight"] < 0:
            fail(f"loss.{term}_weight = {config.loss[f'{term}_weight']} is negative")
    if config.model.init_temperature <= 0:
        fail(f"model.init_temperature = {config.model.init_temperature} must be > 0")
    for key in ("temperature", "student_temperature"):
        if config.teacher[key] <= 0:
            fail(f"teacher.{key} = {config.teacher[key]} must be > 0")
    if config.teacher.concepts not in CONCEPT_SETS:
        fail(f"teacher.concepts = {config.teacher.concepts!r}; choose one of {CONCEPT_SETS}")
    if config.teacher.source not in TEACHER_SOURCES:
        fail(f"teacher.source = {config.teacher.source!r}; choose one of {TEACHER_SOURCES}")
    regions = config.teacher.get("regions", "auto")
    if regions not in TEACHER_REGIONS:
        fail(f"teacher.regions = {regions!r}; choose one of {TEACHER_REGIONS}")
    if regions == "head" and config.teacher.source == "hf":
        fail("teacher.regions = 'head' needs an rmc_jax teacher (teacher.source 'ema' or "
             "'checkpoint'): a pretrained CLIP has no region head; use 'crop'")
    if config.teacher.source == "checkpoint" and not os.path.isdir(
            os.path.join(config.teacher.checkpoint, "checkpoints")):
        fail(f"teacher.checkpoint = {config.teacher.checkpoint!r} is not the workdir of an "
             "rmc_jax run (no checkpoints/ folder in it)")
    if config.teacher.source == "hf":
        try:
            pretrained.teacher_model(config)
        except (OSError, ValueError) as error:
            fail(f"teacher.path = {config.teacher.get('path', '')!r} (teacher.source='hf' needs "
                 f"a pretrained CLIP directory, e.g. 'hf:/path/to/clip'): {error}")
    if config.loss.global_loss not in GLOBAL_LOSSES:
        fail(f"loss.global_loss = {config.loss.global_loss!r}; choose one of {GLOBAL_LOSSES}")
    if config.loss.global_positives not in GLOBAL_POSITIVES:
        fail(f"loss.global_positives = {config.loss.global_positives!r}; choose one of "
             f"{GLOBAL_POSITIVES}")
    if config.loss.backend not in losses.BACKENDS:
        fail(f"loss.backend = {config.loss.backend!r}; choose one of {losses.BACKENDS}")
    lengths = (config.data.max_text_len, config.data.max_caption_len,
               config.data.max_sentence_len)
    if max(lengths) > config.model.text.max_len:
        fail(f"data.max_text_len/max_caption_len/max_sentence_len = {lengths} exceed "
             f"model.text.max_len = {config.model.text.max_len}")
    if config.loss.sentence_weight > 0 and config.data.sentences_per_report < 1:
        fail("loss.sentence_weight > 0 needs report sentences: set data.sentences_per_report "
             ">= 1 (or loss.sentence_weight = 0)")
    if config.loss.sentence_weight == 0 and config.data.sentences_per_report > 0:
        fail(f"loss.sentence_weight = 0 with data.sentences_per_report = "
             f"{config.data.sentences_per_report}: every batch would tokenize report sentences "
             "that no loss term reads. Turning the sentence term off takes both: set "
             "data.sentences_per_report = 0 too (as the global and medclip variants do)")
    if config.data.max_regions < 1 or config.data.num_negatives < 0:
        fail("data.max_regions must be >= 1 and data.num_negatives >= 0")
    if config.batch_size % jax.process_count():
        fail(f"batch_size = {config.batch_size} is not divisible by the "
             f"{jax.process_count()} processes")
    if config.on_nonfinite not in ("stop", "skip"):
        fail(f"on_nonfinite = {config.on_nonfinite!r}; choose 'stop' or 'skip'")
    _, frozen = tower_options(config.optimizer)
    region_terms = [t for t in ("roi", "neg", "distill") if config.loss[f"{t}_weight"] > 0]
    if set(frozen) == set(TOWERS) and not region_terms:
        fail(f"optimizer.freeze = {config.optimizer.freeze!r} freezes both towers and no loss "
             "term trains the region head (loss.roi/neg/distill_weight are 0): only the "
             "temperature would train. Freeze one tower, or evaluate with --mode=eval")
    if config.progress_bar not in ("auto", "on", "off"):
        fail(f"progress_bar = {config.progress_bar!r}; choose 'auto', 'on' or 'off'")


def resolve_compute_dtypes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with each tower's ``dtype='auto'`` replaced by this backend's faster compute
    dtype (``layers.fast_compute_dtype``), so the run's model_config.json records what ran."""
    towers = [t for t in ("vision", "text") if config.model[t].dtype == AUTO_DTYPE]
    if not towers:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for tower in towers:
            config.model[tower].dtype = fast_compute_dtype()
    print(f"compute dtype 'auto' of the {' and '.join(towers)} tower(s): "
          f"{fast_compute_dtype()} on this {jax.default_backend()}", flush=True)
    return config


def resolve_logit_bias(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with ``model.learn_logit_bias`` on where the sigmoid loss needs the bias
    (``loss.global_loss='siglip'``), so that the flag alone picks the loss."""
    if config.loss.global_loss != "siglip" or config.model.learn_logit_bias:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.learn_logit_bias = True
    print(f"loss.global_loss='siglip': the model learns a logit bias (model.learn_logit_bias, "
          f"from model.init_logit_bias = {config.model.init_logit_bias:g})", flush=True)
    return config


def resolve_input_workers(workers: int, saved: int | None = None) -> int:
    """The number of input worker processes for ``data.workers``: as set when >= 0; for -1 (the
    default) the number the resumed checkpoint's input position was saved with (``saved``:
    the order of examples depends on it), else ``pipeline.auto_workers()`` for this host."""
    if workers >= 0:
        return workers
    if workers != pipe.AUTO_WORKERS:
        raise ValueError(f"invalid config: data.workers = {workers}; use a number >= 0 or "
                         f"{pipe.AUTO_WORKERS} (from the host's cores)")
    if saved is not None:
        print(f"input workers: {saved} (data.workers={workers}: the resumed checkpoint's)",
              flush=True)
        return saved
    chosen = pipe.auto_workers()
    print(f"input workers: {chosen} (data.workers={workers}: {pipe.host_cores()} cores, "
          f"{jax.local_device_count()} local {jax.default_backend()} device(s))", flush=True)
    return chosen


# =============================================================================================
# Data
# =============================================================================================


def corpus(source, limit: int = 2000, max_bad_fraction: float = 1.0):
    """Reports and captions of ``limit`` examples spread evenly over the source (tokenizer
    training text), read without decoding an image; unreadable texts are left out within
    ``max_bad_fraction`` (``pipeline.spread_texts``)."""
    for report, captions in pipe.spread_texts(source, limit, max_bad_fraction):
        yield report
        yield from captions


CONCEPT_SETS = ("findings", "findings_and_sides")


def concept_prompts(label_names, concepts: str = "findings") -> list[str]:
    """The caption set the distillation teacher and student score every region against: each
    finding (``'findings'``), or each finding alone and on each side (``'findings_and_sides'``).

    A crop teacher (``teacher.regions='crop'``) sees a region cropped out of its image and
    resized, which removes where the region was, and the side of a finding is where it is (the
    patient's left is on the image's right): a crop's preference between 'left X' and 'right X'
    is noise, and distilling it taught the student's region head that noise (laterality
    accuracy fell), so the default set has no sides. A head teacher keeps the region's
    position; the sided set has not been measured with it."""
    if concepts not in CONCEPT_SETS:
        raise ValueError(f"teacher.concepts = {concepts!r}; choose one of {CONCEPT_SETS}")
    prompts = []
    for name in label_names:
        if is_no_finding(name):
            continue
        finding = name.replace("_", " ").lower()
        prompts += [finding] + ([f"right {finding}", f"left {finding}"]
                                if concepts == "findings_and_sides" else [])
    return prompts


# =============================================================================================
# Model and state (the optimiser: rmc_jax.optim)
# =============================================================================================


def init_state(model: RegionCLIP, tx, config, mesh, warm_start: dict | None = None):
    """Train state sharded on ``mesh``: {'step', 'params', 'opt_state', 'teacher'}.

    Towers named by ``config.init`` start from their pretrained weights, and ``warm_start``
    params (the text tower's masked-LM stage) replace theirs; the rest is random."""
    inputs = example_inputs(model)
    imported = {**pretrained.initial_params(config), **(warm_start or {})}

    def create(key, imported):
        params = pretrained.merge(model.init(key, **inputs)["params"], imported)
        state = {"step": jnp.zeros((), jnp.int32), "params": params,
                 "opt_state": tx.init(params)}
        if config.teacher.source == "ema":
            state["teacher"] = params
        return state

    abstract = jax.eval_shape(create, jax.random.key(config.seed), imported)
    # Params, optimizer moments and teacher follow the same partition rules; scalars replicate.
    shardings = shd.param_shardings(abstract, mesh)
    state = jax.jit(create, out_shardings=shardings)(jax.random.key(config.seed), imported)
    return state, shardings


# =============================================================================================
# The train step (the loss of one batch: rmc_jax.objective)
# =============================================================================================


def make_train_step(model, tx, learning_rates, config, mesh, state_sharding, *, label_names):
    """The jitted step; ``tx`` and ``learning_rates`` as ``make_optimizer`` returns them;
    ``label_names``: the classes of the batches' labels (which one is 'No Finding')."""
    losses_of = functools.partial(batch_losses, model=model, config=config, mesh=mesh,
                                  no_finding=no_finding_column(label_names))
    score_regions = region_teacher(config, model)
    ema = config.teacher.source == "ema"

    def loss_fn(params, *args):
        return losses_of(frozen_towers(params, config), *args)

    def step_fn(state, batch, concepts, frozen_teacher):
        teacher = state.get("teacher", frozen_teacher)
        teacher_logits = (None if score_regions is None or teacher is None else
                          score_regions(teacher, batch["image"], batch["boxes"], concepts))
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (total, logs), grads = grad_fn(state["params"], teacher_logits, batch, concepts,
                                       state["step"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
        if ema:
            decay = config.teacher.ema_decay
            new_state["teacher"] = jax.tree.map(lambda t, p: decay * t + (1 - decay) * p,
                                                state["teacher"], params)
        finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in jax.tree.leaves(logs)]))
        # A non-finite step never touches the state (the host then stops or skips it).
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                                 dict(state, step=state["step"] + 1))
        logs.update(learning_rates(state["step"]), grad_norm=optax.tree.norm(grads),
                    finite=finite)
        # Diagnostics per tower: the parameters after the step and the step's update.
        logs.update(tower_norms(new_state["params"], "param_norm"))
        logs.update(tower_norms(updates, "update_norm"))
        return new_state, logs

    return jax.jit(step_fn, donate_argnums=(0,),
                   out_shardings=(state_sharding, shd.replicated(mesh)))


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """A run's training input up to its batches (before the input worker processes)."""
    source: object                   # the opened training source (``data_sources.open_source``)
    tokenizer: Tokenizer             # reports: config.data.tokenizer, or trained and cached
    captions: Tokenizer              # the same vocabulary at data.max_caption_len
    pipeline: pipe.PipelineConfig
    dataset: object                  # grain.IterDataset of this process's batches


def training_data(config: ml_collections.ConfigDict, workdir: str) -> TrainingData:
    """Open the training source, get the run's tokenizer (``config.data.tokenizer``, or one
    trained on the source's reports and kept in ``workdir`` so that resumed runs and evaluation
    read the same) and build this process's share of the batched training dataset: each of the
    ``jax.process_count()`` processes reads its own rows of every global batch."""
    d = config.data
    source = data_sources.open_source(d.train, d.root, "train", d.train_size, config.seed,
                                      d.image_size, d.source_options)
    tokenizer = tokenizer_for_run(workdir, d.max_text_len, path=d.tokenizer or None,
                                  corpus=corpus(source, max_bad_fraction=d.max_bad_fraction),
                                  vocab_size=d.vocab_size)
    if tokenizer.vocab_size > config.model.text.vocab_size:
        raise ValueError(f"invalid config: the tokenizer has {tokenizer.vocab_size} tokens but "
                         f"model.text.vocab_size = {config.model.text.vocab_size}")
    captions = tokenizer.with_max_len(d.max_caption_len)
    pipeline_config = pipe.PipelineConfig.from_data_config(d)
    pc, pi = jax.process_count(), jax.process_index()
    dataset = pipe.make_dataset(source, pipeline_config, tokenizer,
                                batch_size=config.batch_size // pc, seed=config.seed, train=True,
                                process_index=pi, process_count=pc, caption_tokenizer=captions)
    return TrainingData(source, tokenizer, captions, pipeline_config, dataset)


def fixed_batch_step(config, mesh, source, tokenizer):
    """The train step, a fresh state and one fixed global batch, for measuring and testing the
    step apart from the input pipeline (``tools/bench_data.py``, the step's tests).

    The batch is the first ``config.batch_size`` training examples of ``source`` through the
    training pipeline (``tokenizer`` for reports, a copy at ``data.max_caption_len`` for captions);
    with several processes each contributes its rows of the same global batch.
    Returns (step, state, batch, concepts) as ``step(state, batch, concepts, None)`` takes them.
    """
    config = resolve_logit_bias(config)
    captions = tokenizer.with_max_len(config.data.max_caption_len)
    dataset = pipe.make_dataset(source, pipe.PipelineConfig.from_data_config(config.data),
                                tokenizer, batch_size=config.batch_size, seed=config.seed,
                                train=True, caption_tokenizer=captions)
    full = next(iter(dataset))
    InputCounts().add(full)  # takes out the pipeline's bookkeeping fields
    rows = config.batch_size // jax.process_count()
    local = {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows]
             for k, v in full.items()}
    concepts = tuple(jnp.asarray(x) for x in captions(
        concept_prompts(source.label_names, config.teacher.concepts)))
    model = build_model(config.model)
    tx, learning_rates = make_optimizer(config)
    state, state_sharding = init_state(model, tx, config, mesh)
    step = make_train_step(model, tx, learning_rates, config, mesh, state_sharding,
                           label_names=source.label_names)
    return step, state, shd.global_batch(local, mesh), concepts


# =============================================================================================
# The loop
# =============================================================================================


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading_is_main():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint before exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def threading_is_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def train(config: ml_collections.ConfigDict, workdir: str, *,
          stop_at_step: int | None = None) -> dict:
    """Train (resuming from the latest checkpoint in ``workdir``) and return final metrics.

    ``stop_at_step`` ends the run early exactly as a preemption would (checkpoint, then
    return), so that an interrupted-and-resumed run can be compared with a straight one.
    """
    config = pretrained.resolve_config(config)  # model/image size/tokenizer of config.init
    config = resolve_logit_bias(resolve_compute_dtypes(config))
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    pretrained.save_run_config(workdir, config)
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
    pi = jax.process_index()
    # The peak for MFU, in the towers' compute dtypes, before the input workers share the cores.
    peak = flops.peak_flops(compute_dtypes=[canonical_dtype(config.model[tower].dtype)
                                            for tower in ("vision", "text")])

    # ---- data -------------------------------------------------------------------------------
    data = training_data(config, workdir)
    train_source, tokenizer, caption_tokenizer = data.source, data.tokenizer, data.captions
    checkpointer = ckpt.Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
    workers = resolve_input_workers(config.data.workers, checkpointer.saved_input_workers())
    data_iter = iter(pipe.prefetch(data.dataset, workers))
    concepts = tuple(jnp.asarray(x) for x in caption_tokenizer(
        concept_prompts(train_source.label_names, config.teacher.concepts)))

    # ---- model, optimiser, state ------------------------------------------------------------
    model = build_model(config.model)
    tx, learning_rates = make_optimizer(config)
    # A resumed run restores every parameter; only a fresh one needs the text warm start.
    warm = ({} if checkpointer.latest_step() is not None else
            text_pretrain.warm_start(config, workdir, tokenizer, train_source,
                                     log=lambda line: print(line, flush=True)))
    state, state_sharding = init_state(model, tx, config, mesh, warm)
    restored_counts = {}
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(ckpt.abstract_like(state), data_iter)
        restored_counts = checkpointer.restore_counters()
        print(f"resumed from step {int(state['step'])} in {checkpointer.directory}", flush=True)
    frozen_teacher = load_frozen_teacher(config, state, mesh,
                                         concept_prompts(train_source.label_names,
                                                         config.teacher.concepts))
    train_step = make_train_step(model, tx, learning_rates, config, mesh, state_sharding,
                                 label_names=train_source.label_names)
    if config.loss.global_loss != "medclip" and config.loss.global_positives == "normal":
        names, column = train_source.label_names, no_finding_column(train_source.label_names)
        rule = (f"label {names[column]!r} known and positive" if column is not None else
                "every label known and negative (no 'No Finding' class in the training labels)")
        print(f"global loss: the normal studies of a batch are positives together ({rule})",
              flush=True)

    # ---- loop -------------------------------------------------------------------------------
    progress = {"auto": None, "on": True, "off": False}[config.progress_bar]
    writer = summaries.SummaryWriter(workdir, config.total_steps, enabled=pi == 0,
                                     progress=progress, console_exclude=DIAGNOSTICS)
    flops_per_step = None
    step = int(state["step"])
    pending, last_metrics = None, {}
    counts = InputCounts(restored_counts, config.data.max_bad_fraction)
    window_start, window_steps = time.perf_counter(), 0
    # Closing the iterator stops its worker processes and frees the shared memory of the
    # batches they had ready, at the end of the run, on preemption and on errors alike.
    with pipe.closing(data_iter), _Preemption() as preemption:
        while step < config.total_steps:
            local = next(data_iter)  # over data.max_bad_fraction: BadDataError, listing them
            counts.add(local)
            batch = shd.global_batch(local, mesh)
            if flops_per_step is None:  # lower and compile once, explicitly, to count FLOPs
                lowered = train_step.lower(state, batch, concepts, frozen_teacher)
                # The whole program's count; this process's devices run their share of it.
                flops_per_step = (flops.cost_flops(lowered) or 0.0) / jax.process_count()
                train_step = lowered.compile()
            state, metrics = train_step(state, batch, concepts, frozen_teacher)
            # The step holds what it needs. Dropping the batch here lets Grain free its shared
            # memory; a batch still referenced when the run ends leaks its segments.
            del local, batch
            step += 1
            window_steps += 1
            writer.tick(step)
            # Read the previous step's metrics: the host never waits on the step just queued.
            if pending is not None:
                last_metrics = _check_finite(pending, config, checkpointer)
            pending = (step, metrics)
            if step % config.log_every == 0 or step == config.total_steps:
                last_metrics = _check_finite(pending, config, checkpointer)
                pending = None
                elapsed = time.perf_counter() - window_start
                last_metrics["examples_per_second"] = window_steps * config.batch_size / elapsed
                utilisation = flops.mfu(flops_per_step, window_steps / elapsed, peak)
                if utilisation is not None:
                    last_metrics["mfu"] = utilisation
                last_metrics.update(counts.log_metrics(), input_workers=workers)
                writer.write(step, last_metrics)
                window_start, window_steps = time.perf_counter(), 0
            checkpointer.save(step, state, data_iter, counters=counts.state)
            if config.eval_every and step % config.eval_every == 0 and step < config.total_steps:
                run_evaluation(config, workdir, model, state, tokenizer, writer, step)
            if step == stop_at_step:
                break
            if preemption.requested or checkpointer.reached_preemption(step):
                if checkpointer.latest_step() != step:
                    checkpointer.save(step, state, data_iter, counters=counts.state,
                                      force=True)
                checkpointer.close()
                writer.message(f"preempted at step {step}: checkpoint saved in "
                               f"{checkpointer.directory}")
                writer.close()
                sys.exit(143)
        if pending is not None:
            last_metrics = _check_finite(pending, config, checkpointer)
        if checkpointer.latest_step() != step:
            checkpointer.save(step, state, data_iter, counters=counts.state, force=True)
    checkpointer.close()
    writer.message(counts.summary())
    results = None
    if config.evals.enabled and step >= config.total_steps:
        results = run_evaluation(config, workdir, model, state, tokenizer, writer, step)
    writer.close()
    return {"state": state, "metrics": last_metrics, "model": model, "tokenizer": tokenizer,
            "mesh": mesh, "checkpoint_dir": checkpointer.directory, "eval": results}


def run_evaluation(config, workdir, model, state, tokenizer, writer, step) -> dict:
    """Evaluate the current params (gathered to every process); log the headline numbers."""
    from rmc_jax import evaluate

    params = state["params"]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(params, tiled=True)
    params = jax.device_get(params)
    results = evaluate.evaluate(model, params, config, tokenizer, workdir,
                                batch_size=config.evals.batch_size)
    writer.message(f"[eval at step {step}] {evaluate.summary(results)}")
    return results


class InputCounts:
    """What the input pipeline left out, run totals for metrics.jsonl, TensorBoard and the
    end-of-run summary: bad examples skipped (``bad_examples`` since the last logged step,
    ``bad_examples_total``, and the distinct ones by name), regions beyond
    ``data.max_regions`` and regions without a caption.

    Totals cover every process (summed when logged, a collective: call ``log_metrics`` and
    ``state`` on every process at the same steps) and survive a resume (``state`` is saved with
    each checkpoint). The distinct names are those this process read.
    """

    TOTALS = ("bad_examples_total", "regions_beyond_max_regions", "regions_without_caption")

    def __init__(self, restored: dict | None = None, max_bad_fraction: float = 1.0):
        restored = restored if restored and jax.process_index() == 0 else {}
        self.offset = {key: int(restored.get(key, 0)) for key in self.TOTALS}
        self.local = dict.fromkeys(self.TOTALS, 0)
        self.limit = max_bad_fraction
        self.log = pipe.SkipLog(max_bad_fraction)
        self.log.add(skipped=restored.get("bad_examples_seen", ()))
        self.logged = self.offset["bad_examples_total"]

    def add(self, batch: dict) -> None:
        """Count a batch's bookkeeping fields and take them out of it (they are not inputs)."""
        names = [n for lines in batch.pop("skipped_examples").tolist()
                 for n in lines.split("\n") if n]
        self.log.add(skipped=names)
        self.local["bad_examples_total"] += int(batch.pop("skipped").sum())
        self.local["regions_beyond_max_regions"] += int(batch.pop("regions_cut").sum())
        self.local["regions_without_caption"] += int(batch.pop("regions_without_caption").sum())
        batch.pop("index")

    def totals(self) -> dict[str, int]:
        values = np.array([self.local[key] for key in self.TOTALS], np.int64)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            values = np.asarray(multihost_utils.process_allgather(values)).sum(0)
        return {key: int(v) + self.offset[key] for key, v in zip(self.TOTALS, values)}

    def log_metrics(self) -> dict[str, int]:
        """The totals and ``bad_examples``, the bad examples skipped since the last call."""
        totals = self.totals()
        window, self.logged = totals["bad_examples_total"] - self.logged, \
            totals["bad_examples_total"]
        return {"bad_examples": window, **totals}

    def state(self) -> dict:
        """What a checkpoint keeps: the totals and the distinct bad examples' names."""
        return {**self.totals(), "bad_examples_seen": list(self.log.distinct)}

    def summary(self) -> str:
        """One line (more with bad examples: their names) for the end of the run."""
        total = self.totals()["bad_examples_total"]
        if not total:
            return "bad data:    no example skipped in training"
        where = " read by this process" if jax.process_count() > 1 else ""
        return (f"bad data:    {total} bad example(s) skipped in training (within "
                f"data.max_bad_fraction = {self.limit:.1%}), {len(self.log.distinct)} distinct"
                f"{where}:\n{self.log.listing()}")


def _check_finite(pending, config, checkpointer) -> dict:
    step, metrics = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not metrics.pop("finite"):
        offending = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if config.on_nonfinite == "stop":
            checkpointer.wait_until_finished()
            raise NonFiniteLossError(
                f"non-finite loss at step {step} in {offending}; last good checkpoint: "
                f"step {checkpointer.latest_step()} in {checkpointer.directory}")
        logging.warning("skipped step %d: non-finite %s", step, offending)
    return metrics


def load_frozen_teacher(config, state, mesh, prompts=()):
    """Params of a finished run used as a fixed teacher (teacher.source='checkpoint'), or a
    pretrained CLIP's params and its encoding of the concept ``prompts`` (source='hf')."""
    if config.teacher.source == "hf" and config.loss.distill_weight > 0:
        return pretrained.teacher_inputs(config, prompts, mesh)
    if config.teacher.source != "checkpoint" or config.loss.distill_weight == 0:
        return None
    other = ckpt.Checkpointer(config.teacher.checkpoint, 1, 1)
    restored = other.restore(None)  # the other run's state, as saved
    other.close()
    params = restored["params"]
    expected = jax.tree.structure(state["params"])
    if jax.tree.structure(params) != expected:
        raise ValueError(f"teacher.checkpoint {config.teacher.checkpoint}: its model differs "
                         "from this run's model config (parameter trees do not match)")
    return jax.device_put(params, shd.replicated(mesh))
