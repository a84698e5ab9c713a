"""The recipe schema: every key, its types, default, allowed values and one-line doc; the --quick profile."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from lnzoo.errors import did_you_mean


@dataclass(frozen=True)
class Field:
    """One recipe key: accepted types, default, allowed values, one-line doc."""

    types: tuple[type, ...]
    default: Any = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""
    required: bool = False
    min: float | None = None
    max: float | None = None


def F(types, default=None, doc="", choices=None, required=False, min=None, max=None) -> Field:  # noqa: A002
    return Field(types if isinstance(types, tuple) else (types,), default, choices, doc, required, min, max)


NUM = (int, float)
OPT_STR = (str, type(None))
SOURCE = (str, list, type(None))
PLUGIN_TABLE = "plugin"   # a table {name = ..., **factory kwargs}, checked against the factory
TASK_TABLE = "per-task"   # a table keyed by task name

# The schema. Sections are dicts; leaves are Fields; markers name dynamic tables.
SCHEMA: dict[str, Any] = {
    "extends": F(OPT_STR, None, "another recipe (path relative to this one) whose keys this one overrides"),
    "name": F(OPT_STR, None, "run name (default: the recipe file's stem)"),
    "description": F(str, "", "one line shown in the run summary"),
    "seed": F(int, 0, "seed of everything: splits, init, augmentation, sampling"),
    "tasks": {
        "main": F(str, None, "the task that picks the best epoch and is summarised first", required=True),
        "task_weights": (TASK_TABLE, F(NUM, 1.0, min=0.0)),
        "define": (TASK_TABLE, None),  # recipe-local tasks: {name = {classes = [...], aliases = {...}, ...}}
        "options": (TASK_TABLE, {
            "label_smoothing": F(NUM, None, "override the task's label smoothing", min=0.0, max=0.99),
            "class_weighting": F(OPT_STR, None, "override the task's class weighting", choices=("balanced", "none", None)),
        }),
    },
    "data": {
        "train": F(SOURCE, None, "list file(s), CSV manifest or class folders; empty: the built-in phantom"),
        "test": F(SOURCE, None, "internal test set, evaluated separately"),
        "external": F(SOURCE, None, "external test set (another centre), evaluated separately"),
        "views": F(list, ["full"], "the views of a sample, e.g. ['full', 'crop'], ['full', 'roi'] or "
                                   "['2d', 'cdfi', 'elasto']"),
        "label_columns": (TASK_TABLE, F(str, None, "manifest column holding the task's label")),
        "bbox_column": F(str, "bbox", "manifest column 'x0 y0 x1 y1' (pixels) that the 'roi' view crops to"),
        "mask_column": F(str, "mask", "manifest column with a mask file whose extent the 'roi' view crops to"),
        "empty_roi": F(str, "error", "a 'roi' view whose mask marks nothing: error (listed by validate), "
                                     "whole_image (that image's 'roi' view is the uncropped image) or missing "
                                     "(the view is absent for it; the model's other views predict)",
                       choices=("error", "whole_image", "missing")),
        "roi_margin": F(NUM, 0.1, "margin added to each side of the box for the 'roi' view (fraction of size)",
                        min=0.0, max=2.0),
        "crop_suffix": F(str, "-crop", "list files: the ROI crop sits in a mirror folder with this suffix"),
        "patient_column": F(str, "patient", "manifest column holding the patient id"),
        "missing_labels": F(list, [], "label values that mean 'no label', e.g. ['unlabeled', 'NA']"),
        "missing_covariates": F(list, [], "covariate values that mean unknown besides an empty cell and NaN, e.g. "
                                          "['NA', 'unknown']"),
        "patient_regex": F(OPT_STR, None, "list files: regex whose group 1, applied to the file name, is the patient id"),
        "image_size": F(int, 224, "square input size in pixels", min=16),
        "max_image_pixels": F(int, 100_000_000, "an image with more pixels is refused, naming the file (guards "
                                                "against decompression bombs)", min=1),
        "resize": F(str, "squash", "how images reach image_size", choices=("squash", "letterbox")),
        "mask_marks": F(bool, False, "find burned-in calipers and measurement text in every image (lnzoo's mark "
                                     "detector, as lnzoo ingest --inside-marks mask) and fill them from around them "
                                     "before training and prediction: a mitigation for the shortcut lnzoo audit "
                                     "flags; stored with the model, so serving masks too"),
        "normalize": F(str, "imagenet", "input normalisation", choices=("imagenet", "half")),
        "batch_size": F(int, 32, min=1),
        "num_workers": F(int, 0, "DataLoader worker processes (0: load in the main process)", min=0),
        "inputs": (TASK_TABLE, (PLUGIN_TABLE, "input")),  # {NAME = {name = KIND, column = ..., **options}}
        "identical_images": F(str, "error", "identical image bytes under two patients of the training data: "
                                            "error, or group them into one split group", choices=("error", "group")),
        "covariates": F(list, [], "manifest columns joined to the image features as clinical covariates, e.g. "
                                  "['age', 'sex', 'axis_ratio', 'elasto_score', 'flow_pattern', 'hilum']"),
        "covariate_types": F(dict, {}, "declare a covariate numeric or categorical, e.g. {grade = \"categorical\"}; "
                                       "otherwise a column is numeric when every cell is a number, categorical "
                                       "when none is or starts like one, and an error naming the cells between"),
        "subgroups": F(list, [], "columns whose values split the evaluation into subgroups (TRIPOD+AI): per value n, "
                                 "prevalence, AUC with a patient-bootstrap CI, sensitivity/specificity at the operating "
                                 "point and calibration slope, in evaluation.json, the report and the model card; e.g. "
                                 "[\"center\", \"scanner\", \"sex\", \"age_band\"]"),
        "subgroup_bands": F(dict, {}, "subgroups cut from a numeric column at declared points, e.g. {age_band = "
                                      "{column = \"age\", cuts = [40, 60]}}: < 40, 40 to < 60, >= 60"),
        "skip_bad_rows": F(bool, False, "leave out bad rows and unreadable images (reported) instead of failing"),
        "cache": F(str, "memory", "decoded, resized images: memory (this run), disk (also across runs, under "
                                  "$LNZOO_CACHE/images) or none", choices=("memory", "disk", "none")),
        "sampling": F(str, "class_weights", "class balance for the main task",
                      choices=("class_weights", "oversample", "none")),
        "balance_by": F(OPT_STR, None, "a manifest column holding a confounder (e.g. \"scanner\", \"center\"): "
                                       "training draws every value of it equally often within each class, so it no "
                                       "longer tells the classes apart (the mitigation for what lnzoo audit's "
                                       "metadata check flags)"),
        "phantom": {
            "patients": F(int, 160, "phantom patients", min=8),
            "seed": F(int, 0, "phantom seed"),
            "difficulty": F(NUM, 0.5, "0 easy ... 1 heavily overlapping classes", min=0.0, max=1.0),
            "source": F(str, "manifest", "which phantom files feed the run",
                        choices=("manifest", "stage1_lists")),
            "external": F(bool, False, "also generate a second phantom (another seed, half the patients) as "
                                       "the external test set, like a second centre"),
            "shortcut": F(list, [], "plant spurious cues that correlate with malignancy, to test whether a model "
                                    "looks at the node (lnzoo audit): \"KIND:STRENGTH\" items, KIND one of calipers "
                                    "(burned-in calipers and readout), doppler_box (a Doppler box outline), scanner "
                                    "(a brighter scanner B with a logo); STRENGTH s in [0, 1]: present on a malignant "
                                    "image with probability (1+s)/2, on a benign one (1-s)/2; e.g. "
                                    "[\"calipers:0.8\"]. Adds the manifest columns marks_caliper, doppler_box, "
                                    "scanner; the external phantom gets none"),
        },
        "augment": {
            "rotation": F(NUM, 15.0, "max rotation in degrees", min=0.0, max=180.0),
            "hflip": F(NUM, 0.5, "horizontal flip probability", min=0.0, max=1.0),
            "vflip": F(NUM, 0.0, "vertical flip probability", min=0.0, max=1.0),
            "color_jitter": F(NUM, 0.2, "brightness/contrast jitter strength", min=0.0, max=1.0),
            "blur": F(NUM, 0.1, "Gaussian blur probability", min=0.0, max=1.0),
            "scale": F(list, [0.85, 1.0], "random resized crop area range [min, max]"),
            "speckle": F(NUM, 0.0, "probability of multiplicative speckle (ultrasound)", min=0.0, max=1.0),
            "gain": F(NUM, 0.0, "probability of a gain + TGC depth-curve change (ultrasound)", min=0.0, max=1.0),
            "depth_attenuation": F(NUM, 0.0, "probability of extra attenuation with depth (ultrasound)",
                                   min=0.0, max=1.0),
            "shadow": F(NUM, 0.0, "probability of an acoustic shadow band (ultrasound)", min=0.0, max=1.0),
        },
    },
    "model": {
        "init_from": F(OPT_STR, None, "a checkpoint (.safetensors) or run directory (its fold 0) whose backbone "
                                      "weights start this model; heads are always new"),
        "shared_backbone": F(bool, True, "one backbone for all views (true) or one per view (false)"),
        "covariate_hidden": F(int, 32, "hidden width of the MLP that embeds data.covariates before the fusion "
                                       "(LLNM-Net's idea)", min=1),
        "input_features": F(int, 0, "width each non-image input (covariates, text, morphology) is encoded to before "
                                    "the fusion: 0 = the backbone's feature width (128 without image views)", min=0),
        "backbone": (PLUGIN_TABLE, "backbone"),
        "fusion": (PLUGIN_TABLE, "fusion"),
        "head": (PLUGIN_TABLE, "head"),
        "heads": (TASK_TABLE, (PLUGIN_TABLE, "head")),
    },
    "train": {
        "method": F(str, "finetune", "finetune: train the network; linear_probe: frozen backbone, features "
                                     "extracted once, scaler + logistic regression per fold (C chosen by grouped "
                                     "CV on the training part), stored as a linear head",
                    choices=("finetune", "linear_probe")),
        "epochs": F(int, 30, min=1),
        "optimizer": F(str, "sgd", choices=("sgd", "adam", "adamw")),
        "lr": F(NUM, 0.01, "base learning rate (peak after warmup)", min=0.0),
        "min_lr": F(NUM, 0.0, "floor of the cosine schedule; must not exceed lr", min=0.0),
        "momentum": F(NUM, 0.9, "SGD momentum", min=0.0, max=1.0),
        "weight_decay": F(NUM, 1e-4, min=0.0),
        "scheduler": F(str, "cosine", "stepped once per optimizer step", choices=("cosine", "constant")),
        "warmup_epochs": F(NUM, 1.0, "linear warmup length in epochs", min=0.0),
        "early_stopping_patience": F(int, 0, "epochs without improvement before stopping (0: off)", min=0),
        "monitor": F(str, "auc", "validation metric of the main task that picks the best epoch",
                     choices=("auc", "balanced_accuracy", "accuracy", "f1_macro", "mcc", "loss")),
        "checkpoint_every": F(int, 1, "write the resumable state (lnzoo run --resume) every N epochs; 0: never",
                              min=0),
        "keep": F(str, "best", "which weights a fold keeps: best (the epoch with the best validation monitor) or "
                               "last (the final ones; with a cosine decay and an EMA this avoids picking an epoch "
                               "on the noise of a small validation part)", choices=("best", "last")),
        "val_fraction": F(NUM, 0.15, "patients of each training part held out to pick the epoch", min=0.05, max=0.5),
        "grad_clip": F(NUM, 0.0, "max gradient norm (0: off)", min=0.0),
        "view_dropout": F(NUM, 0.0, "training only: probability of dropping each view of a sample (at least "
                                    "one kept), so a fused model still predicts when a modality is missing",
                          min=0.0, max=0.9),
        "mean_teacher": {
            "weight": F(NUM, 0.0, "weight of the mean-teacher consistency loss on images without a main-task "
                                  "label (0: off; the seed's stage-I code used 0.1)", min=0.0),
            "ema": F(NUM, 0.995, "teacher = EMA of the student, BatchNorm buffers included", min=0.0, max=0.99999),
            "threshold": F(NUM, 0.95, "teacher confidence needed before a pseudo-label counts", min=0.0, max=1.0),
            "rampup_epochs": F(NUM, 5.0, "sigmoid ramp-up of the weight over this many epochs", min=0.0),
        },
        "ema": F(NUM, 0.0, "decay of an exponential moving average of the weights (and BatchNorm buffers) "
                           "that is evaluated and saved instead of the raw weights (0: off)", min=0.0, max=0.99999),
        "amp": F((bool, str), "auto", "mixed precision (autocast) in training and prediction: auto = on CUDA "
                                      "only; true elsewhere only with amp_dtype = \"bfloat16\" (CPU bf16 autocast)"),
        "amp_dtype": F(str, "auto", "autocast dtype: auto = bfloat16 on a GPU that supports it natively, else "
                                    "float16 (then with a GradScaler; bfloat16 needs none)",
                       choices=("auto", "bfloat16", "float16")),
        "channels_last": F((bool, str), "auto", "channels_last memory format: auto = on CUDA and CPU "
                                                     "(ResNet-18 trains ~15% faster on CPU with it)"),
        "fused": F((bool, str), "auto", "fused optimizer kernel (one launch for all parameters): auto = on CUDA "
                                        "where torch has one for the optimizer; true also on the CPU (an error "
                                        "where torch has none)", choices=("auto", True, False)),
        "pin_memory": F((bool, str), "auto", "page-locked loader batches for asynchronous host-to-GPU copies: "
                                             "auto = on CUDA", choices=("auto", True, False)),
        "sync_every": F((int, str), "auto", "read the loss back from the device (NaN guard, progress) every N "
                                            "steps and at the epoch's end: auto = 1 on the CPU (free there), "
                                            "25 on a GPU, whose queue a read would drain", min=1),
        "sync_bn": F(bool, False, "with several processes (torchrun): BatchNorm statistics over the global batch "
                                  "(SyncBatchNorm, CUDA only) instead of each process's share"),
        "compile": F(bool, False, "torch.compile the model for training steps (first epoch slower while it "
                                  "compiles; checkpoints, EMA and predictions use the uncompiled module)"),
        "device": F(str, "auto", "auto, cpu, cuda or cuda:N"),
        "threads": F(int, 0, "torch CPU threads (0: the CPUs this process may use: its affinity, SLURM_CPUS_PER_TASK)", min=0),
        "track": F(list, [], "experiment trackers that follow the run (registered trackers, e.g. [\"mlflow\"], "
                             "[\"tensorboard\"]): the recipe as parameters, per-epoch metrics as they come, the final "
                             "metrics and the report; a tracker that fails warns and never stops the run"),
        "tta": F(str, "none", "test-time augmentation for validation, held-out, test and served predictions: "
                              "none, or hflip (probabilities averaged over the image and its mirror)",
                 choices=("none", "hflip")),
    },
    "cv": {
        "folds": F(int, 5, "patient-grouped stratified folds", min=2),
        "run_folds": F((list, str), "all", "'all' or a list of fold indices to train"),
        "folds_file": F(OPT_STR, None, "CSV with columns patient,fold (e.g. a previous run's folds.csv or a "
                                       "paper's published split) fixing each patient's fold instead of drawing "
                                       "them; path relative to the recipe"),
    },
    "pretrain": {
        "method": F(OPT_STR, None, "self-supervised pretraining: the recipe trains its backbone without labels (a "
                                   "registered pretrainer: simclr, byol) instead of the tasks' models, for "
                                   "model.init_from; empty: an ordinary run"),
        "data": F(SOURCE, None, "unlabelled images to pretrain on: folders (every image below them), list files, "
                                "CSV manifests (their path column), an lnzoo ingest or synth folder; labels are "
                                "ignored. Empty: the images of data.train"),
        "options": F(dict, {}, "the method's own options, e.g. {temperature = 0.2, projection_dim = 128}"),
        "augment": F(dict, {}, "changes to the two views' augmentation (keys of data.augment); the defaults: crops of "
                               "30-100% of the image, rotation 10, colour jitter 0.4, blur 0.3, speckle 0.5, gain "
                               "0.5, depth attenuation 0.4, shadow 0.2, and no horizontal flip (laterality)"),
        "probe_every": F(int, 1, "epochs between k-NN probes of the backbone on the recipe's labelled data (its main "
                                 "task, patient-grouped folds): the health signal of a pretraining; 0: never", min=0),
        "probe_k": F(int, 10, "neighbours of the k-NN probe", min=1),
        "transductive": F(bool, False, "the pretraining images may include images a fine-tuned model is evaluated "
                                       "on; without this, validate and run refuse a model.init_from whose "
                                       "pretraining saw them (by image digest)"),
    },
    "quick": (TASK_TABLE, None),  # free-form dotted overrides; validated after they are applied
}

# The documented --quick profile: small backbone, small images, few epochs, one fold.
QUICK_DEFAULTS: dict[str, Any] = {
    "model.backbone": {"name": "timm", "model_name": "resnet18"},
    "data.image_size": 128,
    "data.batch_size": 32,
    "data.phantom.patients": 160,
    "train.epochs": 12,
    "train.optimizer": "adamw",
    "train.lr": 1e-3,
    "train.grad_clip": 1.0,
    "train.weight_decay": 0.05,
    "train.warmup_epochs": 1.0,
    "train.early_stopping_patience": 0,
    "cv.run_folds": [0],
}

# options every component of a kind takes, handled by lnzoo rather than passed to the factory (lnzoo.model.build_backbone)
LNZOO_OPTIONS: dict[str, dict[str, tuple[type, ...]]] = {"backbone": {"pretrained_file": (str, type(None))}}

# factory parameters lnzoo supplies itself; a recipe may not set them
SUPPLIED = {"backbone": set(), "head": {"in_features", "num_classes"}, "fusion": {"num_views", "in_features"},
            "input": set()}


# --- navigating the schema (recipe.py's checks and --set) ---------------------------------------------

def is_plugin_marker(spec: Any) -> bool:
    return isinstance(spec, tuple) and len(spec) == 2 and spec[0] == PLUGIN_TABLE


def schema_at(dotted: str) -> Any:
    node: Any = SCHEMA
    for part in dotted.split("."):
        if isinstance(node, dict):
            if part not in node:
                return None
            node = node[part]
        elif isinstance(node, tuple) and node[0] == TASK_TABLE:
            node = node[1]
        elif is_plugin_marker(node):
            return node  # plugin arguments are checked against the factory later
        else:
            return None
    return node


def all_paths(node: Any = SCHEMA, prefix: str = "") -> list[str]:
    paths = []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += [f"{prefix}{key}"] + all_paths(value, f"{prefix}{key}.")
    return paths


# -- checking a value against its field or a factory's annotation ------------------------------------------------
def type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "true/false", list: "list",
             dict: "table", type(None): "nothing"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_value(path: str, value: Any, spec: Field, problems: list[str]) -> Any:
    if value is None:
        if spec.required:
            problems.append(f"{path}: required")
        return value
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not ok and float in spec.types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        problems.append(f"{path}: expected {type_name(spec.types)}, got {type(value).__name__} {value!r}")
        return value
    if spec.choices is not None and value not in spec.choices:
        problems.append(f"{path}: {value!r} is not one of {[c for c in spec.choices if c is not None]}"
                        f"{did_you_mean(str(value), [str(c) for c in spec.choices if c is not None])}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.min is not None and value < spec.min:
            problems.append(f"{path}: must be >= {spec.min}, got {value}")
        if spec.max is not None and value > spec.max:
            problems.append(f"{path}: must be <= {spec.max}, got {value}")
    return value


def check_annotation(path: str, value: Any, annotation: Any, problems: list[str]) -> None:
    """Check simple annotations (int, float, bool, str and unions of them); others are trusted."""
    import types
    import typing

    if annotation is inspect.Parameter.empty:
        return
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    simple = {int, float, bool, str, type(None), list, dict}
    if not all(a in simple for a in args):
        return
    if isinstance(value, bool):
        ok = bool in args
    elif isinstance(value, int):
        ok = int in args or float in args
    else:
        ok = isinstance(value, tuple(a for a in args if a is not bool))
    if not ok:
        problems.append(f"{path}: expected {type_name(tuple(args))}, got {type(value).__name__} {value!r}")
