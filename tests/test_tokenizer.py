"""Tokenizer: trained WordPiece is deterministic, saved and reloaded; HF directories load
offline."""

import os

import numpy as np
import pytest

from rmc_jax.data import tokenizer as tk

CORPUS = ["small nodule in the right upper zone", "moderate left pleural effusion",
          "no pneumothorax", "bilateral perihilar edema", "enlarged cardiac silhouette"] * 10


def test_encodes_cls_text_sep_padded_and_truncated():
    tok = tk.train_wordpiece(CORPUS, vocab_size=300, max_len=8)
    ids, mask = tok(["right nodule", "moderate left pleural effusion " * 5])
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == np.int32
    cls_id, sep_id = tok.backend.token_to_id("[CLS]"), tok.backend.token_to_id("[SEP]")
    assert ids[0, 0] == cls_id and ids[0, 3] == sep_id and mask[0].tolist() == [1] * 4 + [0] * 4
    assert np.all(ids[0, 4:] == tok.pad_id)
    assert mask[1].all() and ids[1, -1] == sep_id  # truncated, still ends with [SEP]
    assert "[UNK]" not in tok.backend.decode(ids[0].tolist(), skip_special_tokens=False)


def test_vocabulary_size_and_frequent_words_are_single_tokens():
    tok = tk.train_wordpiece(CORPUS, vocab_size=60, max_len=8)
    assert tok.vocab_size == 60
    big = tk.train_wordpiece(CORPUS, vocab_size=1000, max_len=8)
    assert big.vocab_size < 1000  # the corpus has fewer pieces than that: no padding entries
    ids, mask = big(["pneumothorax"])
    assert mask.sum() == 3, "a frequent corpus word should be one token between [CLS] and [SEP]"
    rare = big(["pneumomediastinum"])[0][0]
    assert big.backend.token_to_id("[UNK]") not in rare, "unseen words split into pieces"


def test_training_is_deterministic_and_reload_is_identical(tmp_path):
    a = tk.tokenizer_for_run(str(tmp_path), 16, corpus=CORPUS, vocab_size=300)
    assert os.path.isfile(tmp_path / tk.TOKENIZER_FILE)
    b = tk.train_wordpiece(CORPUS, vocab_size=300, max_len=16)
    reloaded = tk.tokenizer_for_run(str(tmp_path), 16)  # no corpus needed: reuses the saved one
    texts = ["Small LEFT apical pneumothorax.", "nodule"]
    for other in (b, reloaded):
        np.testing.assert_array_equal(a(texts)[0], other(texts)[0])
    assert a.vocab_size == reloaded.vocab_size


def test_hf_tokenizer_directory_loads_offline(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = tk.train_wordpiece(CORPUS, vocab_size=300, max_len=12)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend, pad_token="[PAD]",
                                                unk_token="[UNK]", cls_token="[CLS]",
                                                sep_token="[SEP]")
    fast.save_pretrained(tmp_path / "hf")
    loaded = tk.load_tokenizer(str(tmp_path / "hf"), 12)
    np.testing.assert_array_equal(loaded(["right nodule"])[0], tok(["right nodule"])[0])


def test_errors_are_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        tk.load_tokenizer(str(tmp_path / "missing"), 8)
    with pytest.raises(ValueError, match="corpus"):
        tk.tokenizer_for_run(str(tmp_path), 8)
    tok = tk.train_wordpiece(CORPUS, vocab_size=300, max_len=8)
    with pytest.raises(TypeError, match="sequence of strings"):
        tok("a single string")


def test_remembered_encodings_equal_fresh_ones_and_the_memory_is_bounded(monkeypatch):
    """The per-text memory returns exactly what the backend encodes, in any mix of repeated,
    new and duplicate texts; callers may write into what they get; it forgets all at once when
    full, and a pickled copy (a worker process) starts empty."""
    import pickle

    tok = tk.train_wordpiece(CORPUS, vocab_size=300, max_len=10)
    fresh = tk.train_wordpiece(CORPUS, vocab_size=300, max_len=10)
    calls = []
    encode = tok._encode
    monkeypatch.setattr(tok, "_encode", lambda texts: calls.append(list(texts)) or encode(texts))
    batches = [["right nodule", "no pneumothorax"], ["no pneumothorax", "left effusion",
                                                     "left effusion", "right nodule"], []]
    for texts in batches:
        ids, mask = tok(texts)
        assert ids.shape == mask.shape == (len(texts), 10) and ids.dtype == mask.dtype == np.int32
        if texts:
            encodings = fresh.backend.encode_batch(texts)
            np.testing.assert_array_equal(ids, [e.ids for e in encodings])
            np.testing.assert_array_equal(mask, [e.attention_mask for e in encodings])
        ids[:] = -1  # must not reach the memory
    assert calls == [["right nodule", "no pneumothorax"], ["left effusion"]]
    assert tok(["right nodule"])[0].min() >= 0
    monkeypatch.setattr(tok, "CACHE_SIZE", 3)
    tok(["a", "b"])
    assert sorted(tok._cache) == ["a", "b"]
    fresh(["right nodule"])
    assert fresh._cache and pickle.loads(pickle.dumps(fresh))._cache == {}
