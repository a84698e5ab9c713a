"""Burned-in mark detection (lnzoo.ingest.marks) on synthetic scanner-like images: detection rate, false-flag
rate and mask recall per case, and the time per frame of find_marks / fill / image_area (prints; no assertions).

The scenes are the tests' (tests/test_marks.py): speckle B-mode with a dark node, colour flow, orange power
Doppler, bright echoes, over-gained B-mode; calipers ('+' / 'x', 7-15 px, 1-2 px strokes, one or two joined by
a dotted line) and readouts (Pillow's default font, 12-16 px), optionally JPEG'd at quality 85 with 4:2:2 chroma.

Usage: python benchmarks/marks.py [--n 50] [--size 256] [--seed 0] [--no-timing]
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lnzoo.ingest.area import image_area  # noqa: E402
from lnzoo.ingest.marks import fill, find_marks  # noqa: E402
from tests.test_marks import (  # noqa: E402
    BACKGROUNDS,
    background,
    dilated,
    jpeg,
    random_scene,
    screen,
)


def rates(n: int, size: int, seed: int) -> None:
    """One row per case: detected (the flag that was drawn), false flag (a flag that was not), mask recall of the
    drawn pixels (mean, worst) and the mask's pixels farther than 2 px from any drawn one (per drawn pixel)."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    cases: list[tuple[str, str, str, bool]] = []
    for compress in (False, True):
        cases += [("caliper", c, "bmode", compress) for c in ("yellow", "green", "cyan", "white")]
        cases += [("caliper", c, "flow", compress) for c in ("yellow", "white")]
        cases += [("text", c, "bmode", compress) for c in ("yellow", "white", "cyan")]
        cases += [("text", c, "power", compress) for c in ("yellow",)]
        cases += [("caliper", "white", "bright", compress), ("text", "white", "bright", compress)]  # blind spot
        cases += [("clean", "-", bg, compress) for bg in BACKGROUNDS]
    for case, colour, bg, compress in cases:
        rng = np.random.default_rng([seed, zlib.crc32(f"{case} {colour} {bg} {compress}".encode())])
        found = false = 0
        recall: list[float] = []
        extra: list[float] = []
        for _ in range(n):
            rgb, drawn = random_scene(rng, case, colour if colour != "-" else "yellow", bg=bg, compress=compress,
                                      h=size, w=size)
            m = find_marks(rgb)
            if case == "caliper":
                found += m.has_caliper
                false += m.has_text
            elif case == "text":
                found += m.has_text
                false += m.has_caliper
            else:
                false += m.has_caliper or m.has_text
            if drawn.any():
                recall.append((m.mask & drawn).sum() / drawn.sum())
                extra.append((m.mask & ~dilated(drawn, 2)).sum() / drawn.sum())
            else:
                extra.append(float(m.mask.sum()))
        name = f"{case} {colour if colour != '-' else ''} on {bg}{' +jpeg' if compress else ''}".replace("  ", " ")
        rows.append((name, "-" if case == "clean" else f"{found / n:.0%}", f"{false / n:.0%}",
                     f"{np.mean(recall):.2f}" if recall else "-", f"{np.min(recall):.2f}" if recall else "-",
                     f"{np.mean(extra):.2f}" if recall else f"{np.mean(extra):.1f} px"))
    head = ("case", "detected", "false flag", "recall", "worst", "extra")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(len(head))]
    print(f"{n} images per case, {size}x{size}")
    for r in [head, *rows]:
        print("  ".join(v.ljust(wd) for v, wd in zip(r, widths)))


def timing(repeat: int = 20) -> None:
    """Milliseconds per 640x480 frame (one process; ndimage runs on one core)."""
    rng = np.random.default_rng(1)
    clean = background(rng, "bmode", 480, 640)
    marked, _ = random_scene(rng, "caliper", "yellow", compress=True, h=480, w=640)
    texted, _ = random_scene(rng, "text", "white", compress=True, h=480, w=640)
    flow = jpeg(background(rng, "flow", 480, 640))

    def ms(fn, *args) -> float:
        fn(*args)
        start = time.perf_counter()
        for _ in range(repeat):
            fn(*args)
        return (time.perf_counter() - start) / repeat * 1e3

    print("\ntime per 640x480 frame")
    for name, img in (("B-mode, clean", clean), ("B-mode, calipers, jpeg", marked), ("B-mode, readout, jpeg", texted),
                      ("colour flow, jpeg", flow)):
        print(f"  find_marks  {name:26s} {ms(find_marks, img):7.1f} ms")
    mask = find_marks(texted).mask | find_marks(marked).mask
    print(f"  fill        {int(mask.sum())} px masked (+2 px)      {ms(fill, marked, mask):7.1f} ms")
    try:
        from skimage.restoration import inpaint_biharmonic

        grown = dilated(mask, 2)
        start = time.perf_counter()
        inpaint_biharmonic(marked, grown, channel_axis=-1)
        print(f"  (skimage inpaint_biharmonic, same mask   {(time.perf_counter() - start) * 1e3:7.1f} ms)")
    except ImportError:
        pass
    one = screen(rng, 1, 480, 640, (120, 60, 560, 440))
    cine = screen(rng, 8, 480, 640, (120, 60, 560, 440))
    print(f"  image_area  1 frame                      {ms(image_area, one):7.1f} ms")
    print(f"  image_area  8-frame cine                 {ms(image_area, cine):7.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="images per case")
    ap.add_argument("--size", type=int, default=256, help="image side for the rates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    rates(args.n, args.size, args.seed)
    if not args.no_timing:
        timing()


if __name__ == "__main__":
    main()
