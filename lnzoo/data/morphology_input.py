"""The built-in input kind ``morphology``: a nodule's shape, echogenicity, margin and texture features.

Computed from the mask a manifest column names and the image it outlines (:mod:`lnzoo.data.morphology`),
once per file pair and cached (in memory for the run, on disk across runs), then standardised with the
training part's mean and sd per fold. An empty mask is a missing input for that row; an unreadable mask
or one that does not fit its image is a bad row, named with its file and line.

With ``pixel_mm`` (the column of millimetres per pixel: ``pixel_mm_x`` of an ``lnzoo ingest`` manifest, whose
``pixel_mm_y`` is then used too, as the geometric mean), the node's long and short axis (mm) and area (mm^2) are
three more features; every row with a mask must then give its pixel size.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lnzoo.data.samples import Sample
from lnzoo.errors import DataError

CLIP = 8.0  # standardised features beyond +-8 sd (an outlier of the training part's spread) are clipped


class MorphologyInput:
    """Mask (+ image) -> standardised morphology features (len(FEATURES),)."""

    dtype = "float32"

    def __init__(self, column: str = "mask", image: str = "path", hidden: int = 64, cache: str = "disk",
                 pixel_mm: str | None = None):
        if cache not in ("memory", "disk"):
            raise ValueError(f"cache = {cache!r}: use \"memory\" (this run) or \"disk\" (also across runs)")
        self.column, self.image, self.hidden, self.cache_kind = column, image, int(hidden), cache
        self.pixel_mm = pixel_mm or None
        self._cache = None
        self._seen: tuple[int, int, float, int] | None = None  # rows with a mask, empty masks, seconds, cache hits

    @property
    def columns(self) -> list[str]:
        """The mask column and the column of the image it outlines (and of the pixel size, when sizes are in mm)."""
        return [self.column, self.image, *([self.pixel_mm] if self.pixel_mm else [])]

    def keep_in_memory(self) -> None:
        """Served: features of uploaded masks are cached in memory only, never written to disk."""
        self.cache_kind, self._cache = "memory", None

    @property
    def cache(self):
        if self._cache is None:
            from lnzoo.data.morphology import MorphologyCache, cache_dir
            self._cache = MorphologyCache(cache_dir() if self.cache_kind == "disk" else None)
        return self._cache

    def _files(self, sample: Sample):
        mask = sample.cell_path(self.column)
        image = sample.cell_path(self.image) if self.image in sample.cells else sample.views.get("full") or \
            next((p for p in sample.views.values() if p is not None), None)
        return image, mask

    def raw(self, sample: Sample) -> np.ndarray | None:
        """The unstandardised features of a sample (None: no mask, or a mask that marks nothing)."""
        image, mask = self._files(sample)
        if mask is None:
            return None
        if image is None:
            raise ValueError(f"no image for the mask {mask} (column {self.image!r} is empty)")
        features = self.cache.get(image, mask)
        if features is None or not self.pixel_mm:
            return features
        from lnzoo.data.morphology import size_px

        major, minor, area = size_px(mask)  # type: ignore[misc] # the mask marks something: features exist
        mm = self._mm_per_pixel(sample)
        return np.concatenate([features, [major * mm, minor * mm, area * mm * mm]])

    def _mm_per_pixel(self, sample: Sample) -> float:
        values = []
        for column in dict.fromkeys([self.pixel_mm, self.pixel_mm.removesuffix("_x") + "_y"]):
            text = str(sample.cells.get(column, "") or "").strip()
            if not text and column != self.pixel_mm:
                continue  # no y column: square pixels
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not (value > 0 and np.isfinite(value)):
                raise ValueError(f"pixel size {text!r} in column {column!r} is not a positive number of mm "
                                 f"(sizes in mm, morphology's pixel_mm, need it on every row with a mask)")
            values.append(value)
        return float(np.sqrt(np.prod(values))) if len(values) == 2 else values[0]

    def check(self, samples: Sequence[Sample], problems: list[str]) -> set[int]:
        if samples and not any(self.column in s.cells for s in samples):
            raise DataError([f"no row of the data has a column {self.column!r} (the nodule mask)"])
        bad: set[int] = set()
        start, hits, given, empty = time.perf_counter(), self.cache.hits, 0, 0
        for i, s in enumerate(samples):
            try:
                got = self.raw(s)
            except ValueError as exc:
                problems.append(f"{s.origin}: morphology: {exc}")
                bad.add(i)
                continue
            given += s.cell_path(self.column) is not None
            empty += s.cell_path(self.column) is not None and got is None
        self._seen = (given, empty, time.perf_counter() - start, self.cache.hits - hits)
        return bad

    def data_note(self) -> str | None:
        if self._seen is None:
            return None
        given, empty, seconds, hits = self._seen
        return (f"{given} mask(s) in column {self.column!r}, {empty} empty (a missing input); morphology of "
                f"{given - hits} computed in {seconds:.1f} s, {hits} read from the cache")

    def fit(self, samples: Sequence[Sample]) -> dict[str, Any]:
        from lnzoo.data.morphology import FEATURE_VERSION, FEATURES, SIZE_DESCRIPTIONS

        rows = [r for s in samples if (r := self.raw(s)) is not None]
        if not rows:
            raise DataError([f"the training part has no non-empty mask in column {self.column!r}"])
        arr = np.stack(rows)
        sd = arr.std(0)
        return {"features": [*FEATURES, *(SIZE_DESCRIPTIONS if self.pixel_mm else [])], "version": FEATURE_VERSION,
                "mean": arr.mean(0).tolist(),
                "sd": np.where(sd > 1e-12, sd, 1.0).tolist(), "n": len(rows), "hidden": self.hidden}

    def shape(self, state: Mapping[str, Any]) -> tuple[int, ...]:
        return (len(state["features"]),)

    def encode(self, sample: Sample, state: Mapping[str, Any]) -> np.ndarray | None:
        from lnzoo.data.morphology import FEATURE_VERSION

        if state.get("version") != FEATURE_VERSION:
            raise DataError([f"the model's morphology features are version {state.get('version')}, this lnzoo "
                             f"computes version {FEATURE_VERSION}: retrain, or use the lnzoo that trained it"])
        try:
            raw = self.raw(sample)
        except ValueError as exc:
            raise DataError([f"{sample.origin}: morphology: {exc}"]) from None
        if raw is None:
            return None
        z = (raw - np.asarray(state["mean"])) / np.asarray(state["sd"])
        return np.clip(z, -CLIP, CLIP).astype(np.float32)

    def encoder(self, state: Mapping[str, Any], out_features: int):
        from lnzoo.nn.inputs import FeatureMLP

        return FeatureMLP(self.shape(state)[0], int(state.get("hidden", self.hidden)), out_features)

    def feature_names(self, state: Mapping[str, Any]) -> list[str]:
        return list(state["features"])
