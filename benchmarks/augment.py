"""Per-image cost of lnzoo's ultrasound augmentations (prints figures; no assertions).

Usage: python benchmarks/augment.py [--size 128] [--n 50]
"""
from __future__ import annotations

import argparse
import time

import torch
from torchvision import tv_tensors

from lnzoo.data.us_augment import AcousticShadow, DepthAttenuation, GainTGC, Speckle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(1)
    x = tv_tensors.Image(torch.randint(40, 200, (3, args.size, args.size), generator=g, dtype=torch.uint8))
    for cls in (Speckle, GainTGC, DepthAttenuation, AcousticShadow):
        t = cls(p=1.0)
        t(x)  # warm-up
        start = time.perf_counter()
        for _ in range(args.n):
            t(x)
        print(f"{cls.__name__}: {(time.perf_counter() - start) / args.n * 1e3:.3f} ms per {args.size}x{args.size} image")


if __name__ == "__main__":
    main()
