"""Free-text ultrasound reports of the phantom's nodes -- synthetic text, NOT clinical reports.

Part of :mod:`lnzoo.data.phantom`. Each patient gets one report (like the report of one
examination, shared by all of the patient's images), written in Chinese and in English. A
report is made in two steps:

1. :func:`draw_findings` decides what the simulated radiologist *saw*: the node's size
   (measured with ``SIZE_SD_MM`` error), shape, margin, fatty hilum, echogenicity, cystic
   necrosis, microcalcifications, colour Doppler flow pattern and an impression. Each finding
   starts from the node's simulated attributes (thresholds below), may be left out of the
   report (``P_OMIT``) or misread (``P_MISREAD``); the impression is missing with
   ``P_NO_IMPRESSION`` and, when given, names the wrong pathology with ``P_WRONG_IMPRESSION``
   (it is drawn from the true pathology, not from the findings). ``P_EMPTY`` of the reports
   are missing altogether (an empty string in both languages).
2. :func:`render_zh` and :func:`render_en` write the *same* findings with randomly chosen
   wording, sentence style and units, so the two languages of one report agree on every
   finding but are not word-for-word translations of a single template.

So a text model can learn much of the pathology signal from a report, but not all of it. The
draw uses its own random stream (``np.random.default_rng([seed, patient, 4])`` in
:func:`lnzoo.data.phantom.generate_phantom`), so the images and other columns do not depend on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ---- noise (probabilities per report or per finding) ---------------------------------------
P_EMPTY = 0.03             # the report is missing: "" in both languages
P_OMIT = 0.25              # a finding is not mentioned (each finding independently)
P_MISREAD = 0.10           # a finding is reported wrongly (hilum "present" when absent, necrosis seen where there is
                           # none, another flow pattern...); the size has its measurement error instead
P_NO_IMPRESSION = 0.30     # the report has no impression line
P_WRONG_IMPRESSION = 0.15  # a given impression names another pathology than the node's
SIZE_SD_MM = 1.0           # sd of the measurement error on each axis (mm)
P_NEGATIVE_STATED = 0.35   # an absent necrosis / calcification is stated ("no ...") rather than left unsaid
P_MULTIPLE = 0.35          # "several nodes, the largest ..." wording (decoration only; carries no signal)
P_CM_EN, P_CM_ZH = 0.35, 0.25  # the size is given in cm instead of mm

# ---- what the radiologist sees, from the node's attributes ----------------------------------
ROUND_RATIO = 1.5          # long/short below this: round, else oval
IRREGULAR_SHAPE = 0.10     # margin irregularity above this: irregular shape
ILL_DEFINED = 0.07         # margin irregularity above this: ill-defined margin
HETEROGENEOUS_DB = 5.0     # echo heterogeneity (dB) above this: heterogeneous
MARKED_HYPO_DB = -22.0     # cortex echo level (dB) below this: markedly hypoechoic
ISO_DB = -11.0             # cortex echo level (dB) above this: isoechoic

LEVELS = ("II", "III", "IV", "V", "VI")
SHAPES = ("oval", "round", "irregular")
MARGINS = ("smooth", "ill_defined")
HILA = ("present", "absent", "unclear")
ECHOES = ("hypoechoic", "marked_hypoechoic", "isoechoic", "heterogeneous")
FLOWS = ("hilar", "peripheral", "mixed", "none")
PATHOLOGIES = ("benign", "metastatic", "lymphoma")
# which wrong pathology a wrong impression names (weights over the other two)
_CONFUSION = {"benign": {"metastatic": 0.5, "lymphoma": 0.5},
              "metastatic": {"benign": 0.6, "lymphoma": 0.4},
              "lymphoma": {"benign": 0.5, "metastatic": 0.5}}
_MIDDLE = ("shape", "margin", "echo", "hilum")  # findings written between the size and the Doppler
_EXTRA = ("necrosis", "calcification")


@dataclass(frozen=True)
class Findings:
    """What one report says. ``None`` = not mentioned. necrosis / calcification:
    "present", "absent" (stated absent) or None."""
    side: str | None  # "left" / "right"; None for the central level VI
    level: str
    multiple: bool
    long_mm: float | None
    short_mm: float | None
    shape: str | None
    margin: str | None
    hilum: str | None
    echo: str | None
    necrosis: str | None
    calcification: str | None
    flow: str | None
    impression: str | None
    order: tuple[str, ...] = field(default=_MIDDLE + _EXTRA)  # order of the descriptive findings


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _weighted(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _true_findings(node) -> dict[str, str]:
    ratio = node.long_mm / node.short_mm
    if node.irreg > IRREGULAR_SHAPE:
        shape = "irregular"
    else:
        shape = "round" if ratio < ROUND_RATIO else "oval"
    if node.het > HETEROGENEOUS_DB:
        echo = "heterogeneous"
    elif node.echo < MARKED_HYPO_DB:
        echo = "marked_hypoechoic"
    elif node.echo > ISO_DB:
        echo = "isoechoic"
    else:
        echo = "hypoechoic"
    return {"shape": shape, "margin": "ill_defined" if node.irreg > ILL_DEFINED else "smooth",
            "hilum": "present" if node.hilum else "absent", "echo": echo,
            "necrosis": "present" if node.necrosis else "absent",
            "calcification": "present" if node.ncalc > 0 else "absent", "flow": node.flow}


def _misread(rng: np.random.Generator, key: str, value: str) -> str:
    if key == "hilum":  # mostly the opposite, sometimes "not clearly seen"
        return _weighted(rng, {"present": 0.7, "unclear": 0.3} if value == "absent"
                         else {"absent": 0.7, "unclear": 0.3})
    if key in _EXTRA:
        return "absent" if value == "present" else "present"
    options = {"shape": SHAPES, "margin": MARGINS, "echo": ECHOES, "flow": FLOWS}[key]
    return _pick(rng, [o for o in options if o != value])


def draw_findings(node, rng: np.random.Generator) -> Findings | None:
    """What the simulated radiologist reports about ``node`` (a phantom ``_Node``); None = no report."""
    if rng.random() < P_EMPTY:
        return None
    level = _pick(rng, LEVELS)
    side = None if level == "VI" else _pick(rng, ("left", "right"))
    multiple = bool(rng.random() < P_MULTIPLE)
    truth = _true_findings(node)
    seen: dict = {}
    for key in ("size", *_MIDDLE, *_EXTRA, "flow"):
        omit, misread = rng.random() < P_OMIT, rng.random() < P_MISREAD
        if key == "size":
            a, b = (round(max(2.0, v + rng.normal(0, SIZE_SD_MM)), 1) for v in (node.long_mm, node.short_mm))
            seen["size"] = None if omit else (max(a, b), min(a, b))
            continue
        value = _misread(rng, key, truth[key]) if misread else truth[key]
        if key in _EXTRA and value == "absent" and rng.random() >= P_NEGATIVE_STATED:
            value = None  # absent and not worth a word
        seen[key] = None if omit else value
    impression = None
    if rng.random() >= P_NO_IMPRESSION:
        impression = node.pathology
        if rng.random() < P_WRONG_IMPRESSION:
            impression = _weighted(rng, _CONFUSION[node.pathology])
    if rng.random() < 0.5:
        order = _MIDDLE + _EXTRA  # the usual order
    else:
        order = tuple(_MIDDLE[i] for i in rng.permutation(len(_MIDDLE))) + tuple(
            _EXTRA[i] for i in rng.permutation(len(_EXTRA)))
    size = seen.pop("size")
    return Findings(side=side, level=level, multiple=multiple,
                    long_mm=size[0] if size else None, short_mm=size[1] if size else None,
                    impression=impression, order=order, **seen)


# ---- Chinese ---------------------------------------------------------------------------------
_ZH_LEVEL = {"II": ("II", "Ⅱ"), "III": ("III", "Ⅲ"), "IV": ("IV", "Ⅳ"), "V": ("V", "Ⅴ"), "VI": ("VI", "Ⅵ")}
_ZH = {
    "shape": {"oval": ("形态规则", "呈椭圆形", "形态规则，呈椭圆形"),
              "round": ("呈类圆形", "形态饱满，呈类圆形", "呈圆形"),
              "irregular": ("形态不规则", "形态欠规则")},
    "margin": {"smooth": ("边界清", "边界清晰", "边界清，边缘光整"),
               "ill_defined": ("边界不清", "边界欠清", "边缘不规则，边界不清")},
    "echo": {"hypoechoic": ("呈低回声", "内部呈低回声，回声均匀"),
             "marked_hypoechoic": ("呈极低回声", "呈明显低回声"),
             "isoechoic": ("呈等回声", "内部呈等回声"),
             "heterogeneous": ("内部回声不均匀", "呈不均质低回声")},
    "hilum": {"present": ("皮髓质分界清，淋巴门结构可见", "淋巴门结构可见", "可见淋巴门样高回声"),
              "absent": ("淋巴门结构消失", "皮髓质分界不清，淋巴门结构消失", "未见明确淋巴门结构"),
              "unclear": ("淋巴门结构显示不清", "皮髓质分界欠清，淋巴门显示欠清")},
    "necrosis": {"present": ("内可见液性暗区", "内见小片状无回声区", "内可见囊性变"),
                 "absent": ("内未见液化区", "未见明显液性暗区")},
    "calcification": {"present": ("可见点状强回声", "内可见多发点状强回声", "内见微钙化"),
                      "absent": ("未见明显钙化", "内未见强回声")},
    "flow": {"hilar": ("门型血流", "可见门型血流信号", "淋巴门处可见条状血流信号"),
             "peripheral": ("周边型血流", "周边可见点条状血流信号，呈周边型"),
             "mixed": ("混合型血流", "内部及周边均可见血流信号，呈混合型"),
             "none": ("未见明显血流信号", "内未见明确血流信号")},
}
_ZH_IMPRESSION = {
    "benign": ("考虑反应性增生", "考虑反应性淋巴结", "多考虑良性"),
    "metastatic": ("考虑转移性淋巴结", "转移性淋巴结可能性大", "考虑转移性淋巴结，建议穿刺活检"),
    "lymphoma": ("淋巴瘤待排", "不除外淋巴瘤，建议活检", "考虑淋巴瘤可能"),
}


def _zh_mm(rng: np.random.Generator, a: float, b: float) -> str:
    if rng.random() < P_CM_ZH:
        return f"{a / 10:.1f}×{b / 10:.1f}cm"
    if rng.random() < 0.5:
        return f"{a:.0f}×{b:.0f}mm"
    return f"{a:.1f}×{b:.1f}mm"


def render_zh(f: Findings, rng: np.random.Generator) -> str:
    """The Chinese text of a report (one line)."""
    level = _pick(rng, _ZH_LEVEL[f.level])
    if f.side:
        loc = f"{'左侧' if f.side == 'left' else '右侧'}颈部{level}区"
    else:
        loc = _pick(rng, ("颈部", "颈前")) + f"{level}区"
    size = _zh_mm(rng, f.long_mm, f.short_mm) if f.long_mm is not None else None
    parts = []
    if f.multiple:
        opening = loc + _pick(rng, ("可见数个淋巴结", "探及多个淋巴结回声"))
        if size:
            opening += _pick(rng, ("，较大者大小约", "，其中较大者约")) + size
    else:
        opening = loc + _pick(rng, ("可见一淋巴结", "可见淋巴结回声", "探及一淋巴结"))
        if size:
            parts.append("大小约" + size)
    keys = [k for k in f.order if getattr(f, k) is not None]
    if f.necrosis == f.calcification == "absent" and rng.random() < 0.6:  # "no liquefaction or calcification"
        first = min(keys.index("necrosis"), keys.index("calcification"))
        keys = [("both_absent" if i == first else k) for i, k in enumerate(keys) if k not in _EXTRA or i == first]
    for key in keys:
        parts.append("未见明显液化及钙化" if key == "both_absent" else _pick(rng, _ZH[key][getattr(f, key)]))
    if f.flow is not None:
        parts.append(_pick(rng, ("CDFI：", "CDFI示：", "彩色多普勒：")) + _pick(rng, _ZH["flow"][f.flow]))
    text = "，".join([opening, *parts])
    text += "。"
    if f.impression is not None:
        head = _pick(rng, ("超声提示：", "诊断意见：", "超声诊断：", "提示："))
        enlarged = f.short_mm is not None and f.short_mm > 10 and f.impression != "benign"
        where = loc + "淋巴结" + ("肿大，" if enlarged else "，") if rng.random() < 0.5 else ""
        text += head + where + _pick(rng, _ZH_IMPRESSION[f.impression]) + "。"
    return text


# ---- English ---------------------------------------------------------------------------------
_EN = {
    "shape": {"oval": ("oval", "oval in shape", "elliptical"),
              "round": ("round", "rounded", "round in shape"),
              "irregular": ("irregular in shape", "irregular outline")},
    "margin": {"smooth": ("well-defined margin", "smooth and well-circumscribed margin", "clear borders"),
               "ill_defined": ("ill-defined margin", "irregular and ill-defined borders", "poorly defined margin")},
    "echo": {"hypoechoic": ("hypoechoic", "homogeneously hypoechoic"),
             "marked_hypoechoic": ("markedly hypoechoic", "very hypoechoic (almost pseudocystic)"),
             "isoechoic": ("isoechoic", "isoechoic to muscle"),
             "heterogeneous": ("heterogeneous internal echotexture", "heterogeneously hypoechoic")},
    "hilum": {"present": ("echogenic fatty hilum preserved", "normal echogenic hilum seen", "fatty hilum present"),
              "absent": ("fatty hilum absent", "loss of the echogenic hilum", "no echogenic hilum seen"),
              "unclear": ("hilum not clearly seen", "hilum poorly visualised")},
    "necrosis": {"present": ("cystic necrosis present", "internal anechoic area suggesting cystic necrosis",
                             "focal cystic change"),
                 "absent": ("no cystic necrosis", "no cystic change")},
    "calcification": {"present": ("microcalcifications present", "punctate echogenic foci (microcalcifications)",
                                  "scattered microcalcifications"),
                      "absent": ("no calcification", "no microcalcifications")},
}
_EN_ADJ = {"shape": {"oval": "oval", "round": "round", "irregular": "irregular"},
           "echo": {"hypoechoic": "hypoechoic", "marked_hypoechoic": "markedly hypoechoic",
                    "isoechoic": "isoechoic", "heterogeneous": "heterogeneous"}}
_EN_FLOW = {"hilar": ("hilar vascularity on {cd}", "{CD}: hilar flow", "central hilar vessels on {cd}"),
            "peripheral": ("peripheral vascularity on {cd}", "{CD}: peripheral flow",
                           "capsular (peripheral) vessels on {cd}"),
            "mixed": ("mixed hilar and peripheral vascularity on {cd}", "{CD}: mixed flow"),
            "none": ("no appreciable flow on {cd}", "{CD}: no flow signal", "avascular on {cd}")}
_EN_IMPRESSION = {
    "benign": ("reactive node.", "benign-appearing lymph node.", "likely reactive lymphadenopathy."),
    "metastatic": ("suspicious for metastasis.", "features suspicious for a metastatic node; FNA recommended.",
                   "likely metastatic lymph node."),
    "lymphoma": ("consider lymphoma.", "lymphoma cannot be excluded; biopsy recommended.", "suspicious for lymphoma."),
}


def _en_size(rng: np.random.Generator, a: float, b: float) -> str:
    if rng.random() < P_CM_EN:
        return f"{a / 10:.1f} x {b / 10:.1f} cm"
    return f"{a:.0f} x {b:.0f} mm" if rng.random() < 0.6 else f"{a:.1f} x {b:.1f} mm"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def render_en(f: Findings, rng: np.random.Generator) -> str:
    """The English text of a report (one line, ASCII)."""
    loc = (f"{f.side} level {f.level}" if f.side else "level VI (central compartment)")
    doppler = _pick(rng, ("colour Doppler", "color Doppler", "CDFI"))
    size = _en_size(rng, f.long_mm, f.short_mm) if f.long_mm is not None else None
    keys = [k for k in f.order if getattr(f, k) is not None]
    style = _pick(rng, ("prose", "telegraphic", "there_is"))
    if style == "prose":  # echo and shape as adjectives in the opening sentence
        adj = [_EN_ADJ[k][getattr(f, k)] for k in ("echo", "shape") if k in keys]
        keys = [k for k in keys if k not in ("echo", "shape")]
        noun = " ".join([*adj, "lymph nodes" if f.multiple else "lymph node"])
        opening = (f"Several {noun} are seen at {loc}" + (f", the largest measuring {size}" if size else "")
                   if f.multiple else
                   f"A{'n' if noun[0] in 'aeiou' else ''} {noun}" + (f" measuring {size}" if size else "")
                   + f" is seen at {loc}")
    elif style == "telegraphic":
        opening = f"{_cap(loc)}: " + ("several lymph nodes, the largest" if f.multiple else "lymph node")
        if size:
            opening += f" {size}" if f.multiple else f", {size}"
    else:
        opening = (f"There are several lymph nodes at {loc}" if f.multiple else f"There is a lymph node at {loc}")
        if size:
            opening += f", {'the largest ' if f.multiple else ''}measuring {size}"
    clauses = [_pick(rng, _EN[k][getattr(f, k)]) for k in keys]
    flow = _pick(rng, _EN_FLOW[f.flow]).format(cd=doppler, CD=_cap(doppler)) if f.flow is not None else None
    if style == "telegraphic":
        text = ", ".join([opening, *clauses, *([flow] if flow else [])]) + "."
    else:
        text = opening + "."
        if clauses:
            text += " " + _cap(", ".join(clauses)) + "."
        if flow:
            text += " " + _cap(flow) + "."
    if f.impression is not None:
        head = _pick(rng, ("Impression:", "IMPRESSION:", "Conclusion:", "Opinion:"))
        text += f" {head} {_pick(rng, _EN_IMPRESSION[f.impression])}"
    return text


def write_report(node, rng: np.random.Generator) -> tuple[str, str]:
    """(Chinese, English) report of one phantom node; ("", "") for a missing report (``P_EMPTY``)."""
    f = draw_findings(node, rng)
    if f is None:
        return "", ""
    return render_zh(f, rng), render_en(f, rng)
