"""The built-in input kind ``text``: a report in a manifest cell (Chinese or English), tokenised offline.

The vocabulary is fitted on each fold's training reports only, with the ``tokenizers`` library:
BERT's normaliser splits Chinese text into characters, and WordPiece learns words and sub-words for
the rest. Nothing is downloaded. The fitted tokenizer is JSON, stored in the checkpoint sidecar.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lnzoo.data.samples import Sample
from lnzoo.errors import DataError

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1: padding is 0, as the encoder expects
MISSING_TEXT = ("", "nan", "na", "n/a", "none", "null")


def _tokenizer(lowercase: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


class TextInput:
    """A free-text report per row -> token ids (max_length,), 0-padded; an empty report is a missing input."""

    dtype = "int64"
    reads = "text"  # the cell is the input (the server takes it as a form field)

    def __init__(self, column: str, max_length: int = 128, vocab_size: int = 2000, min_frequency: int = 2,
                 lowercase: bool = True, encoder: str = "transformer", dim: int = 128, layers: int = 2,
                 heads: int = 4, dropout: float = 0.1):
        if encoder not in ("pooled", "transformer"):
            raise ValueError(f"encoder = {encoder!r}: use \"pooled\" (mean of token embeddings) or \"transformer\"")
        if max_length < 4 or vocab_size < 16:
            raise ValueError(f"max_length ({max_length}) must be >= 4 and vocab_size ({vocab_size}) >= 16")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.column, self.max_length, self.vocab_size = column, int(max_length), int(vocab_size)
        self.min_frequency, self.lowercase = int(min_frequency), bool(lowercase)
        self.arch = {"encoder": encoder, "dim": int(dim), "layers": int(layers), "heads": int(heads),
                     "dropout": float(dropout)}
        self._loaded: dict[str, Any] = {}  # tokenizer JSON digest -> Tokenizer
        self._seen = (0, 0, 0)  # rows, empty, truncated (what check saw)

    def text(self, sample: Sample) -> str | None:
        text = (sample.cells.get(self.column) or "").strip()
        return None if text.casefold() in MISSING_TEXT else text

    def check(self, samples: Sequence[Sample], problems: list[str]) -> set[int]:
        if samples and not any(self.column in s.cells for s in samples):
            raise DataError([f"no row of the data has a column {self.column!r} (the report text)"])
        texts = [self.text(s) for s in samples]
        given = [t for t in texts if t is not None]
        truncated = 0
        if given:  # counted with a vocabulary of all rows: only a count for the data line, never a model input
            tok = self._fit_tokenizer(given)
            truncated = sum(len(e.ids) > self.max_length for e in tok.encode_batch(given))
        self._seen = (len(texts), len(texts) - len(given), truncated)
        return set()  # an empty report is a missing input, a long one is truncated: no row is bad

    def data_note(self) -> str | None:
        rows, empty, truncated = self._seen
        if not rows:
            return None
        return (f"{rows - empty} report(s) in column {self.column!r}, {empty} empty (a missing input), "
                f"{truncated} over {self.max_length} tokens (truncated)")

    def _fit_tokenizer(self, texts: Sequence[str]):
        from tokenizers import trainers

        tok = _tokenizer(self.lowercase)
        trainer = trainers.WordPieceTrainer(vocab_size=self.vocab_size, min_frequency=self.min_frequency,
                                            special_tokens=[PAD, UNK], show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return tok

    def fit(self, samples: Sequence[Sample]) -> dict[str, Any]:
        texts = [t for s in samples if (t := self.text(s)) is not None]
        if not texts:
            raise DataError([f"the training part has no report in column {self.column!r}: nothing to fit a "
                             "vocabulary on"])
        tok = self._fit_tokenizer(texts)
        return {"tokenizer": tok.to_str(), "vocab_size": tok.get_vocab_size(), "max_length": self.max_length}

    def _tok(self, state: Mapping[str, Any]):
        key = hashlib.sha1(state["tokenizer"].encode("utf-8")).hexdigest()
        tok = self._loaded.get(key)
        if tok is None:
            from tokenizers import Tokenizer
            tok = self._loaded[key] = Tokenizer.from_str(state["tokenizer"])
        return tok

    def shape(self, state: Mapping[str, Any]) -> tuple[int, ...]:
        return (int(state["max_length"]),)

    def tokens(self, sample: Sample, state: Mapping[str, Any]) -> list[str]:
        """The report as the model reads it (for explanations and checks)."""
        text = self.text(sample)
        return [] if text is None else self._tok(state).encode(text).tokens[: int(state["max_length"])]

    def encode(self, sample: Sample, state: Mapping[str, Any]) -> np.ndarray | None:
        text = self.text(sample)
        if text is None:
            return None
        ids = self._tok(state).encode(text).ids[: int(state["max_length"])]
        if not ids:
            return None
        out = np.zeros(int(state["max_length"]), dtype=np.int64)
        out[: len(ids)] = ids
        return out

    def encoder(self, state: Mapping[str, Any], out_features: int):
        from lnzoo.nn.inputs import TextEncoder

        return TextEncoder(int(state["vocab_size"]), int(state["max_length"]), out_features, **self.arch)
