"""A simulated reader study on the phantom (``lnzoo synth --readers N``): SYNTHETIC, NOT CLINICAL READS.

Every image of the phantom is one case, read by N readers of different skill, each once without and once with
AI assistance, on a 5-point confidence scale (1 = surely benign ... 5 = surely malignant, BI-RADS-like). The
truth is the image's ``malignancy`` label. The numbers follow a latent-variable model (in the spirit of
Roe & Metz's simulation of MRMC studies):

- each case has a difficulty shared by every reader: its evidence ``e = 1.6 * malignant + N(0, 1)``;
- the assisting AI sees ``a = 2.4 * malignant + 0.5 * (e - 1.6 * malignant) + N(0, 0.8)``, so it is better than
  any reader and partly fooled by the same hard cases;
- reader j (skills spread from junior to senior) perceives ``u = s_j * e + N(0, sd_j)``; with AI assistance
  ``(1 - w_j) * u + w_j * k * a``, the juniors relying more on the AI (w from 0.55 down to 0.25; k puts the AI
  on the reader's scale);
- a reader's rating cuts the perception at its own four thresholds (some readers call more cases malignant).

Everything comes from ``numpy.random.default_rng([seed, 4242])``: the same phantom seed writes the same reads.
Columns of ``reads.csv``: reader, modality (``unaided``, ``AI-aided``), case (the image's file name), path (the
image, relative to the phantom's folder), patient, truth (the class name: ``malignant`` or ``benign``), rating.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

READS_CSV = "reads.csv"
MODALITIES = ("unaided", "AI-aided")


def simulate_reads(cases: Sequence[Mapping[str, Any]], readers: int, seed: int) -> list[dict[str, str]]:
    """The reads of ``cases`` (each with ``case``, ``path``, ``patient``, ``malignant``) by ``readers`` readers."""
    if readers < 2:
        raise ValueError(f"--readers {readers}: a reader study needs at least 2 readers")
    rng = np.random.default_rng([seed, 4242])
    y = np.asarray([bool(c["malignant"]) for c in cases], float)
    n = y.size
    evidence = 1.6 * y + rng.normal(0, 1, n)
    ai = 2.4 * y + 0.5 * (evidence - 1.6 * y) + rng.normal(0, 0.8, n)
    skill = np.linspace(0.7, 1.4, readers)           # junior ... senior
    noise = np.linspace(1.0, 0.6, readers)
    reliance = np.linspace(0.55, 0.25, readers)
    rows = []
    for j in range(readers):
        own = skill[j] * evidence + rng.normal(0, noise[j], n)
        scale = own.std() / ai.std()
        aided = (1 - reliance[j]) * own + reliance[j] * scale * ai
        shift = rng.normal(0, 0.25)                  # a reader's own leaning towards calling malignant
        cuts = np.quantile(own, [0.3, 0.5, 0.65, 0.8]) + shift
        for modality, perceived in zip(MODALITIES, (own, aided)):
            ratings = 1 + np.searchsorted(cuts, perceived, side="right")
            for c, rating in zip(cases, ratings):
                rows.append({"reader": f"R{j + 1}", "modality": modality, "case": c["case"], "path": c["path"],
                             "patient": c["patient"], "truth": "malignant" if c["malignant"] else "benign",
                             "rating": str(int(rating))})
    return rows


def write_reads(phantom: Path, readers: int, seed: int) -> Path:
    """Simulate the reads of every labelled image of the phantom in ``phantom`` and write ``reads.csv`` there."""
    from lnzoo.data.tables import csv_reader
    from lnzoo.files import csv_text, write_atomic

    reader, _ = csv_reader(phantom / "manifest.csv")
    cases = [{"case": Path(row["path"]).name, "path": row["path"], "patient": row["patient"],
              "malignant": row["malignancy"] == "malignant"}
             for row in reader if row.get("malignancy") in ("malignant", "benign")]
    rows = simulate_reads(cases, readers, seed)
    header = ["reader", "modality", "case", "path", "patient", "truth", "rating"]
    return write_atomic(phantom / READS_CSV, csv_text(header, rows, line_end="\n"))
