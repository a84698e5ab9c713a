"""The built-in input kind ``text``: a report in a manifest cell (Chinese or English), tokenised offline.

The vocabulary is fitted on each fold's training reports only, with the ``tokenizers`` library:
BERT's normaliser splits Chinese text into characters, its pre-tokeniser English into words, and a
WordPiece model reads a word whole when the training reports had it often enough, else piece by
piece. Nothing is downloaded. The fitted tokenizer is JSON, stored in the checkpoint sidecar.
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
                 heads: int = 4, dropout: float = 0.1, init: str | None = None):
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
        self.init = init  # a checkpoint whose text input (vocabulary + encoder) starts this one
        self._start: tuple[dict[str, Any], str, Any] | None = None  # (its state, key prefix, weights path)

    def _read_init(self) -> None:
        """The pretrained text input of ``init`` (a local lnzoo checkpoint or run directory; never downloaded):
        its vocabulary replaces fitting one, its architecture this one's, its weights start the encoder."""
        from lnzoo.bundle import checkpoints_of
        from lnzoo.errors import UsageError
        from lnzoo.record import ModelRecord

        try:  # a checkpoint, a run directory or a bundle: its first fold model
            record = ModelRecord.read(checkpoints_of(self.init)[0])
        except UsageError as exc:
            raise UsageError(f"init = {self.init!r}: {exc} (give a .safetensors checkpoint, a run directory or a "
                             "bundle with a text input)") from None
        weights = record.weights
        entry = record.input_entry("text")
        if entry is None:
            raise UsageError(f"init = {self.init!r}: {weights} has no text input (its inputs: "
                             f"{[e['name'] for e in record.inputs]})")
        table = entry["table"]
        self.max_length = int(entry["state"]["max_length"])
        self.arch = {k: table.get(k, v) for k, v in self.arch.items()}  # the pretrained encoder's shape
        self._start = (dict(entry["state"]), f"inputs.{entry['name']}.", weights)

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
        """A WordPiece vocabulary of the texts, built in a fixed order: the tokenizers trainer breaks ties between
        equally frequent pieces differently from one process to the next (another vocabulary for the same reports,
        so DDP ranks, a resumed fold or a rerun would disagree). Here: padding 0, unknown 1, every character seen
        (alone and as a word's continuation, so no word of the training reports is unknown), then the words seen
        at least ``min_frequency`` times, most frequent first (ties alphabetically), up to ``vocab_size``."""
        from collections import Counter

        from tokenizers import models

        tok = _tokenizer(self.lowercase)
        words: Counter[str] = Counter()
        for text in texts:
            words.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
        chars = sorted({c for w in words for c in w})
        pieces = [PAD, UNK, *chars, *(f"##{c}" for c in chars)]
        known = set(pieces)
        frequent = sorted((w for w, n in words.items() if n >= self.min_frequency and len(w) > 1 and w not in known),
                          key=lambda w: (-words[w], w))
        pieces += frequent[: max(0, self.vocab_size - len(pieces))]
        tok.model = models.WordPiece({t: i for i, t in enumerate(pieces)}, unk_token=UNK)
        return tok

    def fit(self, samples: Sequence[Sample]) -> dict[str, Any]:
        if self.init and self._start is None:  # a training run (a loaded checkpoint's weights are its own)
            self._read_init()
        if self._start is not None:  # the pretrained vocabulary, learnt on other reports than this run's
            return {**self._start[0], "arch": dict(self.arch), "init": str(self._start[2])}
        texts = [t for s in samples if (t := self.text(s)) is not None]
        if not texts:
            raise DataError([f"the training part has no report in column {self.column!r}: nothing to fit a "
                             "vocabulary on"])
        tok = self._fit_tokenizer(texts)
        return {"tokenizer": tok.to_str(), "vocab_size": tok.get_vocab_size(), "max_length": self.max_length,
                "arch": dict(self.arch)}  # the encoder's shape: a checkpoint rebuilds it from this, not from defaults

    def _tok(self, state: Mapping[str, Any]):
        key = hashlib.sha1(state["tokenizer"].encode("utf-8")).hexdigest()
        tok = self._loaded.get(key)
        if tok is None:
            from tokenizers import Tokenizer
            tok = Tokenizer.from_str(state["tokenizer"])
            if tok.token_to_id(PAD) != 0:  # the encoder masks id 0 as padding
                raise DataError([f"text input {self.column!r}: its vocabulary gives {PAD} the id "
                                 f"{tok.token_to_id(PAD)}, not 0"])
            self._loaded[key] = tok
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

        module = TextEncoder(int(state["vocab_size"]), int(state["max_length"]), out_features,
                             **state.get("arch", self.arch))
        if self._start is not None:  # start from the pretrained encoder; a projection of another width stays new
            from lnzoo.checkpoint import read_weights

            _, prefix, weights = self._start
            own = module.state_dict()
            tensors = {k[len(prefix):]: v for k, v in read_weights(weights, "init: ").items() if k.startswith(prefix)}
            fits = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
            if not any(k.startswith("embed.") for k in fits):
                raise DataError([f"init = {self.init!r}: its text encoder does not fit this one (no embedding of "
                                 f"vocabulary size {state['vocab_size']} in {weights})"])
            module.load_state_dict(fits, strict=False)
        return module
