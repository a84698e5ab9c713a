"""The frozen-feature baseline: a frozen backbone, standardised features and a logistic regression."""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from lnzoo.data.samples import MISSING, Sample
from lnzoo.errors import UsageError
from lnzoo.train.schedule import seed_everything


class LinearProbe:
    """C chosen by patient-grouped CV on the training samples only; the scaler is folded into a linear
    head, so the result is an ordinary model. Features are extracted once per run (the backbone is
    frozen and built from the recipe seed) and reused by every fold."""

    def __init__(self, trainer):
        from lnzoo.model import build_model, init_from_checkpoint

        self.trainer = trainer
        recipe = trainer.recipe
        seed_everything(recipe.config.seed)
        self.model = build_model(recipe, trainer.host, trainer.tasks)
        self.init_report = (init_from_checkpoint(self.model, recipe.config.model.init_from)
                            if recipe.config.model.init_from else None)
        self.predictor = trainer.predictor(self.model.to(trainer.device).eval())
        self.features: dict[str, np.ndarray] = {}

    def _extract(self, samples: Sequence[Sample]) -> np.ndarray:
        todo = [s for s in samples if s.key not in self.features]
        if todo:
            loader = DataLoader(self.predictor.dataset(todo), batch_size=max(64, self.trainer.data_cfg.batch_size))
            with torch.no_grad():
                for x, present, _, idx, inputs in loader:
                    x, present, inputs = self.predictor.to_device(x, present, inputs)
                    for i, row in zip(idx.tolist(), self.model.features(x, present, inputs).float().cpu().numpy()):
                        self.features[todo[i].key] = row
        return np.stack([self.features[s.key] for s in samples]).astype(np.float64)

    def fit(self, samples: Sequence[Sample]):
        """(model with the fitted linear heads, one history row per task)."""
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedGroupKFold
        from sklearn.preprocessing import StandardScaler

        X = self._extract(samples)
        groups = np.array([s.patient for s in samples])
        model = copy.deepcopy(self.model)
        seed, sampling = self.trainer.recipe.config.seed, self.trainer.data_cfg.sampling
        history = []
        for name, task in self.trainer.tasks.items():
            y = np.array([s.labels.get(name, MISSING) for s in samples])
            keep = y != MISSING
            classes_present = np.unique(y[keep])
            if len(classes_present) < 2:
                continue
            counts = np.bincount(y[keep])
            n_splits = int(max(2, min(5, counts[counts > 0].min(), len(set(groups[keep])))))
            scaler = StandardScaler().fit(X[keep])
            Xs = scaler.transform(X[keep])
            splits = list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
                          .split(Xs, y[keep], groups[keep]))
            weighting = "balanced" if task.class_weighting == "balanced" and sampling != "none" else None
            lr = LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=splits, scoring="neg_log_loss", max_iter=3000,
                                      class_weight=weighting)
            lr.fit(Xs, y[keep])
            coef = lr.coef_ / scaler.scale_
            bias = lr.intercept_ - (lr.coef_ * scaler.mean_ / scaler.scale_).sum(1)
            weight = np.zeros((task.num_classes, X.shape[1]))
            b = np.zeros(task.num_classes)
            if coef.shape[0] == 1:  # binary: logit of the second class present against the first
                weight[classes_present[1]], b[classes_present[1]] = coef[0], bias[0]
            else:
                weight[classes_present], b[classes_present] = coef, bias
                b[np.setdiff1d(np.arange(task.num_classes), classes_present)] = -1e4  # never seen: never predicted
            fc = getattr(model.heads[name], "fc", None)
            if not isinstance(fc, torch.nn.Linear):
                raise UsageError(f"train.method = \"linear_probe\" stores its logistic regression in a head's `fc` "
                                 f"linear layer; the head of task {name!r} has none")
            with torch.no_grad():
                fc.weight.copy_(torch.as_tensor(weight, dtype=fc.weight.dtype))
                fc.bias.copy_(torch.as_tensor(b, dtype=fc.bias.dtype))
            history.append({"task": name, "C": float(lr.C_[0]), "n": int(keep.sum()), "inner_folds": n_splits})
        return model, history
