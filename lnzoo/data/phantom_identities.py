"""The DICOM phantom's fake patients (:mod:`lnzoo.data.phantom_dicom`): names, IDs, dates, hospitals and referrers
drawn from small lists of obviously fake values, so a test can prove that none of them leaves ``lnzoo ingest``.
SYNTHETIC, NOT CLINICAL DATA."""
from __future__ import annotations

import numpy as np

# clearly fake PHI; names combine a surname and a given name (144 pairs, then a middle initial)
_SURNAMES = ("DOE", "ROE", "POE", "MOE", "NOONE", "NOBODY", "PHANTOM", "SYNTHETIC", "TESTCASE", "DUMMY",
             "FAKENAME", "NEMO")
_GIVEN = ("ALEX", "SAM", "KIM", "LEE", "ROBIN", "JORDAN", "CASEY", "TAYLOR", "MORGAN", "RILEY", "JAMIE",
          "AVERY")
_HOSPITALS = ("ST ELSEWHERE HOSPITAL", "NOWHERE GENERAL HOSPITAL", "PHANTOM COUNTY MEDICAL CTR",
              "FICTIONAL UNIVERSITY HOSPITAL")
_REFERRERS = ("DOE^JOHN^^DR", "ROE^RICHARD^^DR", "NEMO^NOBODY^^DR")


def fake_identity(seed: int, idx: int, patient_row: dict) -> dict:
    """The fake identity, study and probe settings of patient ``idx`` (the same for all of its files)."""
    rng = np.random.default_rng([seed, idx, 8])
    pairs = np.random.default_rng([seed, 9]).permutation(len(_SURNAMES) * len(_GIVEN))
    k = idx - 1
    pair = int(pairs[k % len(pairs)])
    name = f"{_SURNAMES[pair // len(_GIVEN)]}^{_GIVEN[pair % len(_GIVEN)]}"
    if k >= len(pairs):  # beyond 144 patients: a middle initial keeps names distinct
        name += "^" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(k // len(pairs) - 1) % 26]
        if k >= len(pairs) * 27:
            name += str(k // (len(pairs) * 27))
    year, month, day = 2019 + int(rng.integers(0, 6)), 1 + int(rng.integers(0, 12)), 1 + int(rng.integers(0, 28))
    b_month, b_day = 1 + int(rng.integers(0, 12)), 1 + int(rng.integers(0, 28))
    age = int(patient_row["age"]) if patient_row.get("age", "").isdigit() else 50
    b_year = year - age - (1 if (b_month, b_day) > (month, day) else 0)  # age at the study = the label
    hh, mm, ss = 8 + int(rng.integers(0, 10)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    return {
        "name": name,
        "id": f"PID{int(rng.integers(100, 1000))}{idx:04d}",
        "birth_date": f"{b_year:04d}{b_month:02d}{b_day:02d}",
        "accession": f"ACC{int(rng.integers(10, 100))}{idx:05d}",
        "institution": _HOSPITALS[int(rng.integers(0, len(_HOSPITALS)))],
        "study_date": f"{year:04d}{month:02d}{day:02d}",
        "study_time": f"{hh:02d}{mm:02d}{ss:02d}",
        "referrer": _REFERRERS[int(rng.integers(0, len(_REFERRERS)))],
        "age": age,
        "gain": int(rng.integers(40, 66)),
    }
