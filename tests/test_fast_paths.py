"""The GPU fast paths of the fit loop (mixed precision dtype, fused optimizers, fewer host syncs, torch.compile),
checked on the CPU: each either gives the plain path's results or is refused with the recipe key named."""
from __future__ import annotations

import contextlib
import csv
import math
import shutil
from pathlib import Path

import pytest
import torch

from lnzoo.errors import RecipeError, UsageError
from lnzoo.inference import device_settings
from lnzoo.plugins import load_plugins
from lnzoo.recipe import load_recipe
from tests.conftest import REPO, TINY, invoke_cli

RECIPE = REPO / "recipes" / "stage1_aux.toml"


def _fit(tmp_path: Path, *sets: str, name: str = "run", emit=None) -> Path:
    from lnzoo.pipeline import fit_folds

    host = load_plugins()
    recipe = load_recipe(RECIPE, host=host, sets=[*TINY, "cv.run_folds=[0]", "train.epochs=1", *sets])
    fit_folds(recipe, host, tmp_path / name, emit=emit)
    return tmp_path / name


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


# -- recipe keys ---------------------------------------------------------------------------------------------------
def test_bad_fast_path_values_are_recipe_errors_naming_the_key():
    with pytest.raises(RecipeError) as info:
        load_recipe(RECIPE, sets=["train.amp_dtype=fp8", "train.sync_every=0", "train.fused=maybe",
                                  "train.pin_memory=1", "train.compile=auto"])
    text = str(info.value)
    assert "train.amp_dtype: 'fp8' is not one of ['auto', 'bfloat16', 'float16']" in text
    assert "train.sync_every: must be >= 1, got 0" in text
    assert "train.fused: 'maybe' is not one of" in text
    assert "train.pin_memory: expected true/false or string, got int 1" in text
    assert "train.compile: expected true/false, got str 'auto'" in text
    assert len(info.value.problems) == 5
    # a word other than "auto" is refused with the recipe, before anything is built
    with pytest.raises(RecipeError, match=r"train.sync_every: expected a positive whole number or \"auto\", got 'often'"):
        load_recipe(RECIPE, sets=["train.sync_every=often"])
    out = invoke_cli("validate", str(RECIPE), "--quick", "--set", "train.amp_dtype=fp8")
    assert out.returncode == 2 and "train.amp_dtype" in out.stderr and "fp8" in out.stderr


def test_on_the_cpu_the_fast_paths_default_to_the_plain_float32_loop():
    base = load_recipe(RECIPE, sets=["train.device=cpu"]).data["train"]
    assert base["amp"] == "auto" and base["amp_dtype"] == "auto" and base["fused"] == "auto"
    assert base["sync_every"] == "auto" and base["pin_memory"] == "auto" and base["compile"] is False
    plain = device_settings(base)
    assert plain["amp_dtype"] is None and plain["sync_every"] == 1 and plain["pin_memory"] is False
    # amp = true alone keeps float32 on the CPU (a GPU recipe on a laptop); bfloat16 by name turns it on
    assert device_settings({**base, "amp": True})["amp_dtype"] is None
    assert device_settings({**base, "amp": True, "amp_dtype": "bfloat16"})["amp_dtype"] is torch.bfloat16
    assert device_settings({**base, "sync_every": 7, "pin_memory": True})["sync_every"] == 7
    assert device_settings({**base, "pin_memory": True})["pin_memory"] is True


@pytest.mark.parametrize("bf16", [True, False])
def test_on_cuda_auto_picks_bfloat16_where_native_else_float16(monkeypatch, bf16):
    from lnzoo.inference import _amp_dtype

    # the decision alone, without a GPU: whether the card has native bfloat16 is all it reads
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "an old GPU")
    cuda = torch.device("cuda")
    assert _amp_dtype(cuda, "auto", "auto") is (torch.bfloat16 if bf16 else torch.float16)
    assert _amp_dtype(cuda, True, "float16") is torch.float16
    assert _amp_dtype(cuda, False, "bfloat16") is None
    if bf16:
        assert _amp_dtype(cuda, "auto", "bfloat16") is torch.bfloat16
    else:
        with pytest.raises(UsageError, match=r"train.amp_dtype = \"bfloat16\" but an old GPU has no native bfloat16"):
            _amp_dtype(cuda, "auto", "bfloat16")


# -- fused optimizers ----------------------------------------------------------------------------------------------
def _net() -> torch.nn.Module:
    # no bias before the BatchNorm: its gradient would be rounding noise, which Adam scales up to a full step of
    # either sign, so two correct optimizers would part there by lr instead of by rounding
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_a_fused_optimizer_reaches_the_unfused_weights_on_the_cpu(name):
    from lnzoo.train.schedule import make_optimizer

    cfg = {"optimizer": name, "lr": 1e-2, "momentum": 0.9, "weight_decay": 0.05}
    torch.manual_seed(0)
    plain = _net()
    fused = _net()
    fused.load_state_dict(plain.state_dict())
    opts = {"plain": make_optimizer(plain, {**cfg, "fused": "auto"}),
            "fused": make_optimizer(fused, {**cfg, "fused": True})}
    assert not opts["plain"].defaults.get("fused") and opts["fused"].defaults["fused"] is True  # auto: not on the CPU
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(4, 3, 12, 12, generator=gen), torch.randint(0, 2, (4,), generator=gen)
        for model, opt in ((plain, opts["plain"]), (fused, opts["fused"])):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (key, a), b in zip(plain.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=key)
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), _net().state_dict().values()))


def test_fused_true_where_torch_has_no_fused_kernel_names_the_key(monkeypatch):
    from lnzoo.train.schedule import make_optimizer

    class NoFusedAdamW(torch.optim.AdamW):  # a torch whose AdamW has no fused kernel for these parameters
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be on a supported device")
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", NoFusedAdamW)
    cfg = {"optimizer": "adamw", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0}
    with pytest.raises(UsageError, match=r"train.fused = true: torch .* has no fused adamw for parameters on cpu"):
        make_optimizer(_net(), {**cfg, "fused": True})
    assert isinstance(make_optimizer(_net(), {**cfg, "fused": "auto"}), NoFusedAdamW)


# -- fewer host syncs ------------------------------------------------------------------------------------------------
def test_reading_the_loss_back_every_4_steps_changes_no_result(tmp_path):
    events: dict[int, list] = {1: [], 4: []}
    runs = {n: _fit(tmp_path, "train.epochs=2", "data.batch_size=4", f"train.sync_every={n}", name=f"s{n}",
                    emit=lambda e, n=n: events[n].append(e) if type(e).__name__ == "StepEnded" else None)
            for n in (1, 4)}
    for name in ("fold0/history.csv", "predictions.csv"):
        assert (runs[1] / name).read_bytes() == (runs[4] / name).read_bytes(), name
    for name in ("best", "last"):
        one, four = (_weights(runs[n] / "fold0" / f"{name}.safetensors") for n in (1, 4))
        assert one.keys() == four.keys() and all(torch.equal(one[k], four[k]) for k in one), name
    steps = events[1][0].steps
    assert steps >= 5 and [e.step for e in events[1]] == list(range(1, steps + 1)) * 2
    # progress at the read-backs only (every 4th step and the epoch's last), with the same running means
    kept = [(e.epoch, e.step, e.loss) for e in events[1] if e.step % 4 == 0 or e.step == steps]
    assert [(e.epoch, e.step, e.loss) for e in events[4]] == kept


def test_a_nan_loss_between_read_backs_still_stops_the_fold_naming_its_step_and_images(tmp_path, monkeypatch):
    from lnzoo.loss import MultiTaskLoss
    from lnzoo.train.loop import TrainingDiverged

    real = MultiTaskLoss.forward

    def poisoned(self, *args, **kwargs):  # the second training step's loss is NaN; validation is untouched
        loss, parts = real(self, *args, **kwargs)
        if torch.is_grad_enabled():
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 2:
                loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(MultiTaskLoss, "forward", poisoned)
    errors = {}
    for n in (1, 4):
        with pytest.raises(TrainingDiverged) as info:
            _fit(tmp_path, "data.batch_size=4", f"train.sync_every={n}", name=f"s{n}")
        errors[n] = info.value
    assert errors[1].step == errors[1].seen_at == 2 and "read back" not in str(errors[1])
    assert errors[4].step == 2 and errors[4].seen_at == 4
    assert "epoch 1, step 2: the training loss is nan" in str(errors[4]) and "steps 2-4" in str(errors[4])
    # the same batch named either way: the one whose loss was NaN, not the ones after it
    assert errors[4].paths == errors[1].paths and errors[4].paths
    assert all(p in str(errors[4]) for p in errors[4].paths[:8])


# -- mixed precision on the CPU --------------------------------------------------------------------------------------
def test_bfloat16_autocast_on_the_cpu_trains_and_predicts_finite_probabilities(tmp_path, monkeypatch):
    import lnzoo.model
    from lnzoo.inference import load

    seen: set[tuple[bool, torch.dtype]] = set()  # (training, dtype of the first convolution's output)
    build = lnzoo.model.build_model

    def watched(*args, **kwargs):
        model = build(*args, **kwargs)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda mod, inp, out: seen.add((mod.training, out.dtype)))
        return model

    monkeypatch.setattr(lnzoo.model, "build_model", watched)
    run = _fit(tmp_path, "train.device=cpu", "train.amp=true", "train.amp_dtype=bfloat16")
    assert seen == {(True, torch.bfloat16), (False, torch.bfloat16)}  # training steps and validation alike
    with (run / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    probs = [float(r[k]) for r in rows for k in r if k.startswith("p_")]
    assert rows and all(math.isfinite(p) and 0 <= p <= 1 for p in probs)
    trained = load(run / "fold0" / "best.safetensors", as_trained=True)
    assert trained.amp_dtype is torch.bfloat16 and load(run / "fold0" / "best.safetensors").amp_dtype is None
    seen.clear()
    from lnzoo.data.samples import Sample
    proba = trained.predict([Sample({"full": Path(rows[0]["path"])}, "P", {}, "")]).proba
    assert seen == {(False, torch.bfloat16)}
    assert all(torch.isfinite(torch.as_tensor(p)).all() and abs(p.sum() - 1) < 1e-9 for p in proba.values())


# -- torch.compile ---------------------------------------------------------------------------------------------------
def _inductor_unavailable() -> str | None:
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "torch.compile's inductor backend needs a C compiler (cc or gcc) on the CPU; none is installed"
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(3))
    except Exception as exc:  # noqa: BLE001 (any failure of the backend means: not on this platform)
        return f"torch.compile does not run on this platform: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def test_a_compiled_model_trains_and_its_checkpoint_loads_with_plain_key_names(tmp_path, monkeypatch):
    reason = _inductor_unavailable()
    if reason:
        pytest.skip(reason)
    from lnzoo.inference import load

    calls = []
    real = torch.compile

    def recording(model, *args, **kwargs):  # the product's own call, counted: the training steps go through it
        compiled = real(model, *args, **kwargs)
        compiled.register_forward_pre_hook(lambda mod, inp: calls.append(mod.training))
        return compiled

    monkeypatch.setattr(torch, "compile", recording)
    run = _fit(tmp_path, "train.compile=true")
    assert calls and all(calls)  # every call a training step; validation used the plain module
    keys = list(_weights(run / "fold0" / "best.safetensors"))
    assert keys and not any("_orig_mod" in k for k in keys)
    predictor = load(run / "fold0" / "best.safetensors")
    with (run / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    from lnzoo.data.samples import Sample
    proba = predictor.predict([Sample({"full": Path(row["path"])}, "P", {}, "")]).proba
    assert all(torch.isfinite(torch.as_tensor(p)).all() for p in proba.values())


@pytest.mark.parametrize("requested, affinity, env, expected", [
    (3, 8, {}, 3),                                          # the recipe's train.threads wins
    (0, 8, {}, 8),                                          # the CPUs this process may run on
    (0, 8, {"SLURM_CPUS_PER_TASK": "4"}, 4),                # Slurm's allocation when smaller
    (0, 2, {"SLURM_CPUS_PER_TASK": "16"}, 2),               # ... never more than the affinity
    (0, 8, {"LOCAL_WORLD_SIZE": "4"}, 2),                   # torchrun's processes share the machine's CPUs
    (0, 2, {"LOCAL_WORLD_SIZE": "4"}, 1),                   # at least one each
    (0, 8, {"SLURM_CPUS_PER_TASK": "x"}, 8),                # a malformed variable is ignored
])
def test_torch_threads_follow_the_cpus_this_process_may_use(monkeypatch, requested, affinity, env, expected):
    import os

    from lnzoo.inference import cpu_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    threads, why = cpu_threads(requested, env)
    assert threads == expected and why
