"""Masked-language-model warm start of the text tower on the training text (CXR-BERT's recipe).

A text tower trained from scratch by the contrastive losses alone starts by placing every
report near every other: the image tower gets no useful target until the text tower has learnt
which words matter (sides, zones, negations). A short masked-language-model stage on the
training reports first teaches it the language, so image-report alignment
starts from a text tower that already tells "left" from "right" and "no effusion" from
"effusion".

    texts -> tokens -> [MASK] 15% (BERT's 80/10/10) -> text tower -> MLM head -> cross-entropy

Only the text tower's parameters are kept (the head is discarded). The result is cached in
``<workdir>/text_pretrain/`` together with the settings that produced it, so a restarted run
reuses it instead of training it again; a run that resumes from a checkpoint never needs it.
``config.text_pretrain.steps = 0`` turns the stage off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmc_jax.data import pipeline
from rmc_jax.data.sources.reports import model_text
from rmc_jax.models import model_config
from rmc_jax.models.layers import Dense, exact_gelu

CACHE_DIR = "text_pretrain"
PARAMS_FILE = "text_encoder.msgpack"
META_FILE = "settings.json"
MASK_TOKENS = ("[MASK]", "<mask>")


@dataclasses.dataclass(frozen=True)
class Settings:
    """``config.text_pretrain``: how long and on how much text the warm start trains."""

    steps: int = 0                  # 0 = no warm start
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    mask_probability: float = 0.15
    corpus_size: int = 4000         # examples whose reports make the corpus

    @classmethod
    def from_config(cls, section) -> "Settings":
        if section is None:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section.keys()) - names)
        if unknown:
            raise ValueError(f"invalid config: unknown text_pretrain keys {unknown}; valid "
                             f"keys: {sorted(names)}")
        return cls(**{k: section[k] for k in section.keys()})

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.corpus_size < 1:
            raise ValueError(f"invalid config: text_pretrain.steps = {self.steps}, batch_size "
                             f"= {self.batch_size}, corpus_size = {self.corpus_size}; expected "
                             "steps >= 0, batch_size >= 1, corpus_size >= 1")
        if not 0.0 < self.mask_probability < 1.0:
            raise ValueError(f"invalid config: text_pretrain.mask_probability = "
                             f"{self.mask_probability} must be in (0, 1)")


class MaskedLMHead(nn.Module):
    """BERT's prediction head: token states [N, L, D] -> logits [N, L, V] (float32)."""

    vocab_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, states: jax.Array) -> jax.Array:
        h = Dense(states.shape[-1], dtype=self.dtype, name="transform")(states)
        h = nn.LayerNorm(dtype=jnp.float32, name="norm")(exact_gelu(h))
        return nn.Dense(self.vocab_size, dtype=jnp.float32, name="decoder")(h)


class MaskedLM(nn.Module):
    """The run's text tower (under the same name as in ``RegionCLIP``) with an MLM head."""

    text: Any
    vocab_size: int

    def setup(self):
        self.text_encoder = self.text.build()
        self.head = MaskedLMHead(self.vocab_size, dtype=self.text_encoder.dtype)

    def __call__(self, ids: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
        """ids, mask [N, L], positions [N, P] -> logits [N, P, V] at those positions."""
        _, states = self.text_encoder(ids, mask)
        return self.head(jnp.take_along_axis(states, positions[..., None], axis=1))


def mask_tokens(ids: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, mask_id: int,
                special_ids: Sequence[int], vocab_size: int, probability: float = 0.15,
                max_predictions: int | None = None):
    """BERT's masking of ``ids`` [N, L]: each real, non-special token is chosen with
    ``probability`` (every row with a maskable token gets at least one, at most
    ``max_predictions``); a chosen token becomes ``mask_id`` (80%), a random token (10%) or
    stays (10%).

    Returns (inputs [N, L], positions [N, P] int32, targets [N, P] = the original ids there,
    weights [N, P] float32: 1 for a chosen position, 0 for padding), P = ``max_predictions``
    (default: ceil(probability * L) + 2), so the head predicts P positions, not L.
    """
    n, length = ids.shape
    p = max_predictions or int(np.ceil(probability * length)) + 2
    maskable = mask.astype(bool) & ~np.isin(ids, np.asarray(list(special_ids), ids.dtype))
    inputs = ids.copy()
    positions = np.zeros((n, p), np.int32)
    weights = np.zeros((n, p), np.float32)
    for row in range(n):
        candidates = np.flatnonzero(maskable[row])
        if not len(candidates):
            continue
        picked = candidates[rng.random(len(candidates)) < probability]
        if not len(picked):  # every text teaches something
            picked = rng.choice(candidates, 1)
        picked = np.sort(rng.permutation(picked)[:p])
        positions[row, :len(picked)] = picked
        weights[row, :len(picked)] = 1.0
        draw = rng.random(len(picked))
        inputs[row, picked[draw < 0.8]] = mask_id
        swap = picked[(draw >= 0.8) & (draw < 0.9)]
        inputs[row, swap] = rng.integers(0, vocab_size, size=len(swap))
    targets = np.take_along_axis(ids, positions, axis=1)
    return inputs, positions, targets, weights


def masked_lm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean cross-entropy over the chosen positions. logits [N, P, V], targets/weights [N, P]."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def corpus(source, size: int, report_sections: str, max_bad_fraction: float = 1.0
           ) -> list[str]:
    """The reports (as the tower reads them: ``report_sections``) of ``size`` examples spread
    evenly over ``source``, read without decoding images (``pipeline.spread_texts``: an
    unreadable text is left out within ``max_bad_fraction``); empty reports are left out.
    (Region captions are phrases of the reports; at the report length they would be mostly
    padding.)"""
    texts = [model_text(report, report_sections)
             for report, _ in pipeline.spread_texts(source, size, max_bad_fraction)]
    return [text for text in texts if text.strip()]


def train_masked_lm(texts: Sequence[str], tokenizer, text_config, settings: Settings, seed: int,
                    log=None) -> tuple[dict, list[float]]:
    """Train the text tower with an MLM head on ``texts`` -> (text tower params, the loss
    every 10 steps)."""
    mask_id = next((tokenizer.backend.token_to_id(t) for t in MASK_TOKENS
                    if tokenizer.backend.token_to_id(t) is not None), None)
    if mask_id is None:
        raise ValueError(f"text_pretrain: the tokenizer has no mask token ({MASK_TOKENS})")
    special = {tokenizer.backend.token_to_id(t) for t in
               ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "<pad>", "<s>", "</s>", "<mask>",
                "<|startoftext|>", "<|endoftext|>")} - {None}
    ids, mask = tokenizer(list(texts))
    vocab = tokenizer.vocab_size
    model = MaskedLM(text_config, vocab)
    params = model.init(jax.random.key(seed), ids[:1], mask[:1],
                        np.zeros((1, 1), np.int32))["params"]
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, settings.warmup_steps,
        max(settings.steps, settings.warmup_steps + 1), settings.learning_rate * 0.02)
    tx = optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=settings.weight_decay,
                     mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, inputs, attention, positions, targets, weights):
        def loss_fn(p):
            logits = model.apply({"params": p}, inputs, attention, positions)
            return masked_lm_loss(logits, targets, weights)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    batch = min(settings.batch_size, len(ids))
    losses, position = [], 0
    for number in range(settings.steps):
        if position + batch > len(order):
            order, position = rng.permutation(len(ids)), 0
        rows = order[position:position + batch]
        position += batch
        inputs, positions, targets, weights = mask_tokens(
            ids[rows], mask[rows], rng, mask_id=mask_id, special_ids=sorted(special),
            vocab_size=vocab, probability=settings.mask_probability)
        params, opt_state, loss = step(params, opt_state, inputs, mask[rows], positions,
                                       targets, weights)
        if (number + 1) % 10 == 0 or number + 1 == settings.steps:
            losses.append(float(loss))
            if log and ((number + 1) % 50 == 0 or number + 1 == settings.steps):
                log(f"[text warm start {number + 1}/{settings.steps}] masked_lm={losses[-1]:.3f}")
    return jax.device_get(params["text_encoder"]), losses


def fingerprint(texts: Sequence[str], tokenizer, text_config, settings: Settings,
                seed: int) -> str:
    """What the warm start depends on: corpus, vocabulary, tower architecture, settings, seed."""
    digest = hashlib.sha256()
    for part in (tokenizer.backend.to_str(), repr(text_config), repr(settings), str(seed),
                 *texts):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def warm_start(config, workdir: str, tokenizer, source, log=None) -> dict:
    """``{'text_encoder': params}`` from the cache in ``workdir`` or a fresh MLM stage; {} when
    ``config.text_pretrain.steps`` is 0 or the text tower is imported (``config.init.text``)."""
    settings = Settings.from_config(config.get("text_pretrain"))
    if settings.steps == 0 or config.init.get("text", ""):
        return {}
    text_config = model_config(config.model).text
    texts = corpus(source, settings.corpus_size, config.data.report_sections,
                   config.data.get("max_bad_fraction", 1.0))
    key = fingerprint(texts, tokenizer, text_config, settings, config.seed)
    directory = os.path.join(workdir, CACHE_DIR)
    params_path, meta_path = (os.path.join(directory, name) for name in (PARAMS_FILE, META_FILE))
    if os.path.isfile(meta_path) and os.path.isfile(params_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("fingerprint") == key:
            with open(params_path, "rb") as f:
                params = flax.serialization.msgpack_restore(f.read())
            if log:
                log(f"text warm start: reusing {params_path}")
            return {"text_encoder": params}
    start = time.perf_counter()
    params, losses = train_masked_lm(texts, tokenizer, text_config, settings, config.seed, log)
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        with open(params_path, "wb") as f:
            f.write(flax.serialization.msgpack_serialize(params))
        with open(meta_path, "w") as f:
            json.dump({"fingerprint": key, "settings": dataclasses.asdict(settings),
                       "texts": len(texts), "losses_every_10_steps": losses,
                       "seconds": round(time.perf_counter() - start, 1)}, f, indent=1)
    return {"text_encoder": params}
