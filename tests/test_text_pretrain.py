"""The text tower's masked-language-model warm start: masking, loss, training, cache, merge."""

import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs.base import VARIANTS, get_config  # noqa: E402

from rmc_jax import optim  # noqa: E402
from rmc_jax import text_pretrain as tp  # noqa: E402
from rmc_jax import train  # noqa: E402
from rmc_jax.data import sources  # noqa: E402
from rmc_jax.data.tokenizer import train_wordpiece  # noqa: E402
from rmc_jax.models import build_model  # noqa: E402

SPECIAL = (0, 2, 3)  # [PAD], [CLS], [SEP]


def _batch(rows=400, length=32, vocab=100, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, rows)
    ids = rng.integers(10, vocab, (rows, length)).astype(np.int32)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = 2
    ids[np.arange(rows), lengths - 1] = 3
    ids[mask == 0] = 0
    return ids, mask


def test_mask_tokens_chooses_only_real_tokens_at_bert_rates():
    ids, mask = _batch()
    inputs, positions, targets, weights = tp.mask_tokens(
        ids, mask, np.random.default_rng(1), mask_id=4, special_ids=SPECIAL, vocab_size=100)
    chosen = weights.astype(bool)
    rows = np.nonzero(chosen)[0]
    picked = positions[chosen]
    # Targets are the original tokens at the chosen positions; never padding or [CLS]/[SEP].
    np.testing.assert_array_equal(targets[chosen], ids[rows, picked])
    assert not np.isin(ids[rows, picked], SPECIAL).any() and mask[rows, picked].all()
    assert (chosen.sum(1) >= 1).all()  # every row teaches something
    # Positions are unique per row; unchosen inputs are untouched.
    assert all(len(set(p[w])) == w.sum() for p, w in zip(positions, chosen))
    untouched = np.ones_like(ids, bool)
    untouched[rows, picked] = False
    np.testing.assert_array_equal(inputs[untouched], ids[untouched])
    maskable = (mask.astype(bool) & ~np.isin(ids, SPECIAL)).sum()
    assert 0.13 < chosen.sum() / maskable < 0.19  # ~15%, plus one forced per short row
    replaced = inputs[rows, picked]
    share_mask = (replaced == 4).mean()
    share_kept = (replaced == ids[rows, picked]).mean()
    assert 0.74 < share_mask < 0.86 and 0.06 < share_kept < 0.16, (share_mask, share_kept)


def test_masked_lm_loss_is_the_mean_cross_entropy_of_the_chosen_positions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (3, 4))
    weights = (rng.random((3, 4)) < 0.5).astype(np.float32)
    weights[0, 0] = 1.0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    expected = (nll * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(tp.masked_lm_loss(logits, targets, weights)), expected,
                               rtol=1e-6)


def _config(steps=20):
    config = get_config("smoke")
    config.text_pretrain.update(steps=steps, batch_size=16, warmup_steps=5, corpus_size=64,
                                learning_rate=1e-2)
    return config


def _tokenizer_and_source(config):
    source = sources.open_source("synthetic", "", "train", 64, 0, 128)
    return train_wordpiece(train.corpus(source), 512, config.data.max_text_len), source


def test_warm_start_learns_is_cached_and_fits_the_model(tmp_path, monkeypatch):
    config = _config()
    tokenizer, source = _tokenizer_and_source(config)
    warm = tp.warm_start(config, str(tmp_path), tokenizer, source)
    meta = json.load(open(tmp_path / tp.CACHE_DIR / tp.META_FILE))
    assert meta["texts"] == 64 and len(meta["losses_every_10_steps"]) == 2
    # A second call with the same settings reads the cache instead of training.
    monkeypatch.setattr(tp, "train_masked_lm", lambda *a, **k: pytest.fail("retrained"))
    again = tp.warm_start(config, str(tmp_path), tokenizer, source)
    for a, b in zip(jax.tree.leaves(warm), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    # Other settings do not reuse it.
    config.text_pretrain.mask_probability = 0.2
    with pytest.raises(pytest.fail.Exception):
        tp.warm_start(config, str(tmp_path), tokenizer, source)
    # The warm-started tower replaces the random one in the train state; nothing else changes.
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config)
    mesh = train.shd.make_mesh(1, 1)
    cold, _ = train.init_state(model, tx, config, mesh)
    state, _ = train.init_state(model, tx, config, mesh, warm)
    for a, b in zip(jax.tree.leaves(state["params"]["text_encoder"]),
                    jax.tree.leaves(warm["text_encoder"])):
        np.testing.assert_array_equal(a, b)
    for name in state["params"]:
        if name != "text_encoder":
            for a, b in zip(jax.tree.leaves(state["params"][name]),
                            jax.tree.leaves(cold["params"][name])):
                np.testing.assert_array_equal(a, b)


def test_masked_lm_learns_words_from_their_context():
    """Sentences whose words follow from their neighbours: a masked word becomes predictable,
    so the loss falls far below the cost of guessing among the vocabulary's words."""
    config = _config()
    sentences = ["small left pleural effusion at the left base",
                 "large right upper zone consolidation in the right lung",
                 "no pneumothorax and no focal consolidation are seen",
                 "moderate cardiomegaly with a normal mediastinum"]
    tokenizer = train_wordpiece(sentences * 4, 512, 16)
    _, losses = tp.train_masked_lm(sentences * 16, tokenizer, build_model(config.model).text,
                                   tp.Settings(steps=150, batch_size=16, warmup_steps=10,
                                               learning_rate=1e-2, weight_decay=0.0), 0)
    words = len({w for s in sentences for w in s.split()})
    assert losses[0] > 0.8 * np.log(words) and np.mean(losses[-3:]) < 0.25 * np.log(words), \
        losses


def test_warm_start_is_on_for_every_variant_and_off_for_smoke_and_imported_text_towers(tmp_path):
    # The baselines start from the same warm start as roi: the ablation compares objectives.
    steps = {v: get_config(v).text_pretrain.steps for v in VARIANTS}
    assert steps.pop("smoke") == 0 and set(steps.values()) == {300}, steps
    config = get_config("smoke")
    assert tp.warm_start(config, str(tmp_path), None, None) == {}
    config = _config()
    config.init.text = "hf:/somewhere"
    assert tp.warm_start(config, str(tmp_path), None, None) == {}
    with pytest.raises(ValueError, match="unknown text_pretrain keys"):
        tp.Settings.from_config({"stpes": 3})
    with pytest.raises(ValueError, match="mask_probability"):
        tp.Settings(mask_probability=1.5)
