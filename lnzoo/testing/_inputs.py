"""An input kind's checks: rows -> check -> fit (JSON state) -> encode -> encoder."""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lnzoo import contracts
from lnzoo.testing import _shared as shared
from lnzoo.testing._component import Component
from lnzoo.testing._registry import checks_of

check = checks_of("input")


@contextmanager
def _input_run(c: Component, fit: bool = True) -> Iterator[dict[str, Any]]:
    """Build the kind, check every row, fit on the good ones: what a run does before its folds."""
    with tempfile.TemporaryDirectory(prefix="lnzoo-kit-") as tmp:
        kind, rows = c.build(), c.rows_in(Path(tmp))
        problems: list[str] = []
        bad = kind.check(rows, problems)
        good = [r for i, r in enumerate(rows) if i not in set(bad or ())]
        run = {"kind": kind, "rows": rows, "problems": problems, "bad": bad, "good": good}
        if fit:
            run["state"] = kind.fit(good)
            run["shape"] = tuple(kind.shape(run["state"]))
            run["encoded"] = [kind.encode(r, run["state"]) for r in good]
        yield run


def _given(run: dict[str, Any], where: str = "") -> list:
    """The encoded rows that are arrays (a row without the input encodes to None); at least one."""
    import numpy as np

    given = [np.asarray(e) for e in run["encoded"] if e is not None]
    assert given, f"{where}no row encoded to an array; check it on rows that have the input"
    return given


def _batch(run: dict[str, Any]):
    import numpy as np
    import torch

    given = _given(run, f"input {run['kind'].column!r}: ")
    return torch.from_numpy(np.stack(given[:4] * (2 if len(given) < 2 else 1)))  # never a batch of one


def _encoder(c: Component, run: dict[str, Any]):
    """The fitted kind's encoder, at the kit's width."""
    return run["kind"].encoder(run["state"], c.sizes["out_features"])


@check("builds_input_kind")
def _builds(c: Component) -> None:
    kind = c.build()  # lnzoo's build_kind names the Protocol's missing members
    assert kind.dtype in ("float32", "int64"), f"dtype must be 'float32' or 'int64', got {kind.dtype!r}"
    assert isinstance(kind.column, str) and kind.column, "column must be a non-empty string"


@check("bad_rows_named")
def _bad_rows(c: Component) -> None:
    with _input_run(c, fit=False) as run:
        bad, rows, problems = run["bad"], run["rows"], run["problems"]
        assert isinstance(bad, set) and all(isinstance(i, int) and 0 <= i < len(rows) for i in bad), \
            f"check must return a set of row indices, got {bad!r}"
        assert all(isinstance(p, str) for p in problems), "check must append strings to problems"
        unnamed = [rows[i].origin for i in sorted(bad) if not any(rows[i].origin in p for p in problems)]
        assert not unnamed, f"bad rows without a problem naming them (\"file:line: reason\"): {unnamed}"


@check("fit_state_is_json")
def _json(c: Component) -> None:
    with _input_run(c) as run:
        assert isinstance(run["state"], dict), f"fit must return a dict, got {type(run['state']).__name__}"
        try:
            json.dumps(run["state"])
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"the fitted state is not JSON (the checkpoint stores JSON, nothing pickled): {exc}") \
                from None


@check("encode_shape_and_dtype")
def _encode(c: Component) -> None:
    import numpy as np

    with _input_run(c) as run:
        shape, dtype = run["shape"], np.dtype(run["kind"].dtype)
        assert shape and all(isinstance(n, int) and n > 0 for n in shape), f"shape must be positive ints, got {shape}"
        wrong = {(a.shape, str(a.dtype)) for a in _given(run) if a.shape != shape or a.dtype != dtype}
        assert not wrong, f"encode returned {sorted(wrong)}, expected {shape} {dtype}"


@check("encode_is_finite")
def _encode_finite(c: Component) -> None:
    import numpy as np

    with _input_run(c) as run:
        assert all(np.isfinite(np.asarray(e)).all() for e in run["encoded"] if e is not None), \
            "encode returned non-finite values"


@check("stored_state_encodes_the_same")
def _reload(c: Component) -> None:
    import numpy as np

    with _input_run(c) as run:
        again, stored = c.build(), json.loads(json.dumps(run["state"]))  # a checkpoint reload: fresh kind, JSON only
        for row, e in zip(run["good"], run["encoded"]):
            r = again.encode(row, stored)
            assert (r is None) == (e is None) and (e is None or np.array_equal(np.asarray(r), np.asarray(e))), \
                f"{row.origin}: encodes differently from the JSON state a checkpoint stores"


@check("forward_shape")
def _forward(c: Component) -> None:
    with _input_run(c) as run:
        shared.is_module(encoder := _encoder(c, run), c)
        batch = _batch(run)
        out = encoder.train()(batch)
        want = (batch.shape[0], c.sizes["out_features"])
        assert tuple(out.shape) == want, f"encoder output {tuple(out.shape)}, expected {want}"


@check("forward_is_finite")
def _finite(c: Component) -> None:
    with _input_run(c) as run:
        shared.finite(_encoder(c, run).train()(_batch(run)), "the encoder")


@check("backward_reaches_parameters")
def _backward(c: Component) -> None:
    with _input_run(c) as run:
        shared.squared_output_reaches_parameters(_encoder(c, run).train(), _batch(run))


@check("safetensors_round_trip")
def _round_trip(c: Component) -> None:
    with _input_run(c) as run:
        batch = _batch(run)
        shared.same_after_safetensors(lambda: _encoder(c, run), lambda m: m(batch))


@check("encoder_rebuilds_from_stored_state")
def _rebuild(c: Component) -> None:
    import torch
    from safetensors.torch import load, save

    with _input_run(c) as run:
        batch = _batch(run)
        encoder = _encoder(c, run)
        rebuilt = c.build().encoder(json.loads(json.dumps(run["state"])), c.sizes["out_features"])  # fresh kind, JSON
        weights = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
        own = rebuilt.state_dict()
        assert set(own) == set(weights) and all(own[k].shape == v.shape for k, v in weights.items()), \
            ("the encoder rebuilt from the stored state does not fit the trained one's weights: put everything "
             "encoder() depends on (widths, layers) into the state fit() returns")
        rebuilt.load_state_dict(load(save(weights)))
        encoder.eval(), rebuilt.eval()
        with torch.no_grad():
            assert torch.allclose(encoder(batch), rebuilt(batch), atol=1e-5), \
                "the encoder rebuilt from the stored state gives other features"


@check("optional_members_valid")
def _optional(c: Component) -> None:
    with _input_run(c) as run:
        kind, problems = run["kind"], []
        if getattr(kind, "reads", "file") not in ("file", "text"):
            problems.append(f"reads must be 'file' or 'text', got {kind.reads!r}")
        columns = getattr(kind, "columns", None)
        if columns is not None and not (isinstance(columns, (list, tuple)) and columns and
                                        all(isinstance(x, str) and x for x in columns) and kind.column in columns):
            problems.append(f"columns must list the column names it reads, column among them, got {columns!r}")
        if hasattr(kind, "keep_in_memory") and not callable(kind.keep_in_memory):
            problems.append("keep_in_memory must be a method")
        if hasattr(kind, "data_note"):
            note = contracts.input_note(kind) if callable(kind.data_note) else kind.data_note
            if not (note is None or (isinstance(note, str) and "\n" not in note)):
                problems.append(f"data_note() must return one line or None, got {note!r}")
        if hasattr(kind, "feature_names"):
            names = contracts.input_feature_names(kind, run["state"]) if callable(kind.feature_names) else None
            if not (isinstance(names, list) and all(isinstance(x, str) for x in names) and len(run["shape"]) == 1
                    and len(names) == run["shape"][0]):
                problems.append(f"feature_names(state) must name each of the {run['shape']} encoded features, "
                                f"got {names!r}")
        assert not problems, "; ".join(problems)
