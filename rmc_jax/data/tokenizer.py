"""Text -> fixed-length token ids and attention masks, with no download.

Two ways to get a tokenizer:
* a Hugging Face tokenizer directory the user already has (``tokenizer.json`` or the files
  ``transformers.AutoTokenizer`` reads), loaded offline; or
* a WordPiece vocabulary built from the training corpus (deterministically) and saved as
  ``tokenizer.json`` in the workdir, so a run is reproducible and reloads the same vocabulary.

Either way encoding goes through a ``tokenizers.Tokenizer`` (Rust, batched), giving
``[CLS] text [SEP]`` padded/truncated to ``max_len``.
"""

from __future__ import annotations

import collections
import os
from typing import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """Encodes texts into int32 ``ids [N, max_len]`` and ``mask [N, max_len]`` (1 = token).

    Encodings are remembered per text (up to ``CACHE_SIZE`` texts, then forgotten all at once):
    region captions, their hard negatives and the concept prompts recur across examples and
    epochs, and the data pipeline tokenizes a dozen texts per example.
    """

    CACHE_SIZE = 1 << 14

    def __init__(self, backend: tokenizers.Tokenizer, max_len: int):
        if max_len < 2:
            raise ValueError(f"max_len must leave room for [CLS] and [SEP], got {max_len}")
        self.backend = backend
        self.max_len = max_len
        pad = _first_token_id(backend, ("[PAD]", "<pad>", "<|endoftext|>"))
        self.pad_id = 0 if pad is None else pad
        backend.enable_truncation(max_len)
        backend.enable_padding(length=max_len, pad_id=self.pad_id,
                               pad_token=backend.id_to_token(self.pad_id) or "[PAD]")
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}}  # worker processes start with their own

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(texts, str):
            raise TypeError("Tokenizer takes a sequence of strings; wrap a single text in a list")
        texts = list(texts)
        rows = {}  # text -> (ids [max_len], mask [max_len]); local, so threads may share a cache
        for text in texts:
            hit = self._cache.get(text)
            if hit is not None:
                rows[text] = hit
        missing = [text for text in dict.fromkeys(texts) if text not in rows]
        if missing:
            ids, mask = self._encode(missing)
            new = {text: (i, m) for text, i, m in zip(missing, ids, mask)}
            rows.update(new)
            if len(self._cache) + len(new) > self.CACHE_SIZE:
                self._cache = {}
            if len(new) <= self.CACHE_SIZE:
                self._cache.update(new)
        if not texts:
            return (np.zeros((0, self.max_len), np.int32),) * 2
        return (np.stack([rows[text][0] for text in texts]),
                np.stack([rows[text][1] for text in texts]))

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.backend.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], np.int32).reshape(len(texts), self.max_len)
        mask = np.array([e.attention_mask for e in encodings], np.int32).reshape(ids.shape)
        return ids, mask

    def with_max_len(self, max_len: int) -> "Tokenizer":
        """The same vocabulary with another fixed length (a copy: padding is per backend)."""
        return Tokenizer(tokenizers.Tokenizer.from_str(self.backend.to_str()), max_len)

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, TOKENIZER_FILE)
        self.backend.save(path)
        return path


def _first_token_id(backend, candidates):
    for token in candidates:
        token_id = backend.token_to_id(token)
        if token_id is not None:
            return token_id
    return None


def train_wordpiece(corpus: Iterable[str], vocab_size: int, max_len: int,
                    min_frequency: int = 2) -> Tokenizer:
    """Build a lower-casing BERT-style WordPiece tokenizer from ``corpus``, deterministically.

    (The ``tokenizers`` trainer breaks frequency ties differently from run to run, so the
    vocabulary is chosen here: every character, then whole words and frequent word pieces
    ranked by (frequency, text); the same corpus always gives the same ids.)
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: collections.Counter = collections.Counter()
    for text in corpus:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(word for word, _ in words)
    vocab = _wordpiece_vocabulary(counts, vocab_size, min_frequency)
    backend = tokenizers.Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]),
                                                 ("[SEP]", vocab["[SEP]"])])
    return Tokenizer(backend, max_len)


def _wordpiece_vocabulary(counts, vocab_size: int, min_frequency: int) -> dict[str, int]:
    """Special tokens, all characters (word-initial and '##' continuation), then whole words
    and word pieces (prefixes, '##' suffixes) by descending frequency x length saved."""
    chars = sorted({c for word in counts for c in word[:1]})
    continuations = sorted({"##" + c for word in counts for c in word[1:]})
    scores: collections.Counter = collections.Counter()
    for word, count in counts.items():
        if count < min_frequency or len(word) < 2:
            continue
        scores[word] += count * len(word)
        for cut in range(2, len(word)):
            scores[word[:cut]] += count * (cut - 1)
            scores["##" + word[cut:]] += count * (len(word) - cut - 1)
    tokens = list(SPECIAL_TOKENS) + chars + continuations
    seen = set(tokens)
    for piece, _ in sorted(scores.items(), key=lambda item: (-item[1], item[0])):
        if len(tokens) >= vocab_size:
            break
        if piece not in seen and piece != "##":
            tokens.append(piece)
            seen.add(piece)
    return {token: index for index, token in enumerate(tokens)}


def load_tokenizer(path: str, max_len: int) -> Tokenizer:
    """Load from a ``tokenizer.json`` file or a local Hugging Face tokenizer directory."""
    if os.path.isfile(path):
        return Tokenizer(tokenizers.Tokenizer.from_file(path), max_len)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer not found: {path} (expected a tokenizer.json file or "
                                "a local Hugging Face tokenizer directory)")
    if os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
        return Tokenizer(tokenizers.Tokenizer.from_file(os.path.join(path, TOKENIZER_FILE)),
                         max_len)
    import transformers  # slow import; only needed for directories without tokenizer.json

    hf = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"{path}: only fast (Rust) tokenizers are supported; this directory "
                         "yields a slow one")
    return Tokenizer(hf.backend_tokenizer, max_len)


def tokenizer_for_run(workdir: str, max_len: int, *, path: str | None = None,
                      corpus: Iterable[str] | None = None, vocab_size: int = 8000) -> Tokenizer:
    """The run's tokenizer: ``path`` if given; else the one saved in ``workdir``; else trained
    on ``corpus`` and saved in ``workdir`` (so resuming reuses the same vocabulary)."""
    if path:
        return load_tokenizer(path, max_len)
    saved = os.path.join(workdir, TOKENIZER_FILE)
    if os.path.isfile(saved):
        return load_tokenizer(saved, max_len)
    if corpus is None:
        raise ValueError("no tokenizer path and none saved in the workdir: a training corpus "
                         "is needed to train one")
    tokenizer = train_wordpiece(corpus, vocab_size, max_len)
    tokenizer.save(workdir)
    return tokenizer
