"""The torch Dataset: decoded images cached once, views augmented together, labels per task."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lnzoo.config import as_config
from lnzoo.data.encode import encode_sample
from lnzoo.data.images import Preprocessing, load_image, normalise
from lnzoo.data.samples import MISSING, Sample
from lnzoo.errors import DataError


def build_augment(cfg: Mapping[str, Any], size: int) -> Callable | None:
    """The seed's augmentation (rotation, flip, colour jitter, blur) plus the ultrasound physics ones
    (speckle, gain/TGC, depth attenuation, shadowing) as one torchvision v2 pipeline.

    Called on all views of a sample at once, so the full image and its crop (or 2D/CDFI/elasto)
    get the same geometric parameters; the seed flipped them independently.
    """
    from torchvision.transforms import v2

    cfg = as_config(cfg, "data.augment")
    ops: list[Any] = []
    lo, hi = cfg.scale
    if lo < 1.0:
        ops.append(v2.RandomResizedCrop(size, scale=(lo, hi), ratio=(0.85, 1.18), antialias=True))
    if cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.vflip > 0:
        ops.append(v2.RandomVerticalFlip(cfg.vflip))
    if cfg.rotation > 0:
        ops.append(v2.RandomRotation(cfg.rotation))
    if cfg.color_jitter > 0:
        ops.append(v2.ColorJitter(brightness=cfg.color_jitter, contrast=cfg.color_jitter))
    if cfg.blur > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=cfg.blur))
    from lnzoo.data.us_augment import AUGMENT_KEYS, ultrasound_augment
    ops += ultrasound_augment({k: cfg.get(k, 0.0) for k in AUGMENT_KEYS})
    return v2.Compose(ops) if ops else None  # every augmentation off: the images as they are


class ImageCache:
    """Decoded, resized uint8 images: in memory for the run, and optionally on disk across runs.

    The disk cache is keyed by the file's bytes, the preprocessing and the ROI, so an edited image
    or a new image size never reads a stale entry.
    """

    def __init__(self, pre: Preprocessing, disk_dir: Path | None = None, keep: bool = True):
        self.pre, self.keep = pre, keep
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self._images: dict[str, np.ndarray] = {}

    def _disk_key(self, path, roi) -> str:
        h = hashlib.sha1(repr((sorted(self.pre.as_dict().items()), roi)).encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def get(self, path, origin: str = "", roi=None) -> np.ndarray:
        key = f"{path}|{roi}" if roi is not None else str(path)
        img = self._images.get(key)
        if img is not None:
            return img
        disk_file = None
        if self.disk_dir is not None and Path(path).is_file():
            digest = self._disk_key(path, roi)
            disk_file = self.disk_dir / digest[:2] / f"{digest}.npy"
            if disk_file.is_file():
                try:
                    img = np.load(disk_file, allow_pickle=False)
                except (OSError, ValueError):
                    img = None  # a damaged entry is rebuilt below
        if img is None:
            img = load_image(path, self.pre, origin, roi, self.pre.roi_margin)
            if disk_file is not None:
                disk_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = disk_file.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, img, allow_pickle=False)
                os.replace(tmp, disk_file)  # atomic: a concurrent reader never sees half a file
        if self.keep:
            self._images[key] = img
        return img

    def preload(self, samples: Sequence[Sample], progress: Callable[[int, int], None] | None = None) -> None:
        """Decode every image up front, collecting every bad file before failing."""
        problems: list[str] = []
        todo = [(p, s.origin, s.rois.get(v)) for s in samples for v, p in s.views.items() if p is not None]
        for i, (path, origin, roi) in enumerate(todo):
            try:
                self.get(path, origin, roi)
            except DataError as exc:
                problems += exc.problems
            if progress:
                progress(i + 1, len(todo))
        if problems:
            raise DataError(problems, "unreadable image(s)")


class NodeDataset(Dataset):
    """Sample i -> (views (V,3,H,W) float, present (V + K,) bool, labels (T,) long, i, {input: encoded array}).

    ``present`` covers the fusion's members: the image views, then the K other inputs (covariates, text...).
    """

    def __init__(self, samples: Sequence[Sample], views: Sequence[str], tasks: Sequence[str], cache: ImageCache,
                 augment: Callable | None = None, view_dropout: float = 0.0, inputs=None):
        self.samples, self.views, self.tasks = list(samples), list(views), list(tasks)
        self.cache, self.augment, self.view_dropout = cache, augment, view_dropout
        self.inputs = inputs  # the fitted lnzoo.inputs.Inputs, or None

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self, task: str) -> np.ndarray:
        return np.array([s.labels.get(task, MISSING) for s in self.samples], dtype=np.int64)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        s = self.samples[i]
        size = self.cache.pre.image_size
        enc = encode_sample(s, self.views, self.cache.get, self.inputs)
        images = [tv_tensors.Image(torch.zeros(3, size, size, dtype=torch.uint8) if arr is None else
                                   torch.from_numpy(arr).permute(2, 0, 1).contiguous()) for arr in enc.pixels]
        if self.augment is not None and images:  # one draw of random parameters for all views of the sample
            images = self.augment(images)
        encoded = {k: torch.from_numpy(v) for k, v in enc.inputs.items()}
        present = enc.present
        present_t = torch.tensor(present, dtype=torch.bool)
        if self.view_dropout > 0 and int(present_t.sum()) > 1:
            # modality dropout: the fused model learns to predict from whichever views and inputs it gets
            keep = (torch.rand(len(present)) >= self.view_dropout) & present_t
            if not keep.any():
                keep[torch.nonzero(present_t)[torch.randint(int(present_t.sum()), (1,))]] = True
            present_t = keep
        if images:
            x = normalise(torch.stack([img.as_subclass(torch.Tensor) for img in images]), self.cache.pre)
            x[~present_t[: len(images)]] = 0.0
        else:
            x = torch.zeros(0, 3, size, size)
        y = torch.tensor([s.labels.get(t, MISSING) for t in self.tasks], dtype=torch.long)
        return x, present_t, y, i, encoded
