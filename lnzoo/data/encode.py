"""One sample, or a batch, as a model is fed: the one encoder the torch dataset, the ONNX engine and serving share.

A model's members are its image views (pixels in the stored preprocessing, ROI crops cut as stored) and then
its other inputs (covariates, report text, morphology...) encoded with their fitted state; ``present`` says,
member by member, which were given. Torch-free: ONNX Runtime serves without torch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnzoo.data.images import Preprocessing, normalise
from lnzoo.data.samples import Sample

# (path, origin, roi) -> uint8 (H, W, 3) pixels in the model's preprocessing (an ImageCache's get, or load_image)
PixelSource = Callable[[Any, str, Any], np.ndarray]


@dataclass
class EncodedSample:
    """One sample's members: each view's uint8 pixels (None when absent), every member's presence, the inputs."""

    pixels: list[np.ndarray | None]
    present: list[bool]
    inputs: dict[str, np.ndarray]


def encode_sample(sample: Sample, views: Sequence[str], pixels: PixelSource, inputs=None) -> EncodedSample:
    """``sample``'s views read through ``pixels`` and its other inputs encoded by ``inputs`` (lnzoo.inputs.Inputs)."""
    images: list[np.ndarray | None] = []
    for view in views:
        path = sample.views.get(view)
        images.append(None if path is None else pixels(path, sample.origin, sample.rois.get(view)))
    present = [img is not None for img in images]
    encoded: dict[str, np.ndarray] = {}
    if inputs:
        encoded, given = inputs.encode(sample)
        present += given
    return EncodedSample(images, present, encoded)


def encode_batch(samples: Sequence[Sample], views: Sequence[str], pre: Preprocessing, pixels: PixelSource,
                 inputs=None, channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(x float32 (B, V, 3, H, W) normalised, zero where absent; present bool (B, V + K); inputs {name: (B, ...)}).

    ``channels_last``: x is laid out (B, V, H, W, 3) in memory, seen as (B, V, 3, H, W), as a channels-last model
    takes it (torch needs no copy); the values are the same."""
    size = pre.image_size
    if channels_last:
        x = np.zeros((len(samples), len(views), size, size, 3), dtype=np.float32).transpose(0, 1, 4, 2, 3)
    else:
        x = np.zeros((len(samples), len(views), 3, size, size), dtype=np.float32)
    present, arrays = [], []
    for i, s in enumerate(samples):
        enc = encode_sample(s, views, pixels, inputs)
        for j, img in enumerate(enc.pixels):
            if img is not None:
                normalise(img.transpose(2, 0, 1), pre, out=x[i, j])
        present.append(enc.present)
        arrays.append(enc.inputs)
    names = list(arrays[0]) if arrays else []
    return (x, np.asarray(present, dtype=bool).reshape(len(samples), -1),
            {n: np.stack([a[n] for a in arrays]) for n in names})
