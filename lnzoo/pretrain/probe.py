"""The health signal of a pretraining: a k-NN probe of the backbone's features on the recipe's labelled data.

Every labelled image of the recipe's data (its main task; the phantom by default) is embedded by the backbone in
evaluation mode (no augmentation), the features L2-normalised; a k-nearest-neighbour classifier (cosine, k =
``pretrain.probe_k``) is scored by its balanced accuracy over 5 patient-grouped folds (scikit-learn), so an image is
never classified by a neighbour from its own patient. Chance is 1 / classes; a pretraining whose probe falls or
stays at chance is learning nothing useful for the task.
"""
from __future__ import annotations

import numpy as np


class KnnProbe:
    def __init__(self, recipe, data, cache, k: int):
        """``data``: the recipe's data as :func:`lnzoo.data.run_data.load_run_data` read it."""
        from lnzoo.tasks import MISSING

        main = recipe.config.tasks.main
        view = next(iter(recipe.config.data.views), "full")
        self.samples = [s for s in data.pool if s.labels.get(main, MISSING) != MISSING and s.views.get(view)]
        self.paths = [s.views[view] for s in self.samples]
        self.y = np.asarray([s.labels[main] for s in self.samples])
        self.groups = np.asarray([s.patient for s in self.samples])
        self.cache, self.k = cache, k

    def features(self, backbone, device, batch: int = 64) -> np.ndarray:
        import torch

        from lnzoo.data.images import normalise

        was = backbone.training
        backbone.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(self.paths), batch):
                pixels = np.stack([self.cache.get(p, str(p)) for p in self.paths[i:i + batch]]).transpose(0, 3, 1, 2)
                x = normalise(torch.from_numpy(np.ascontiguousarray(pixels)), self.cache.pre).to(device)
                out.append(backbone(x).float().cpu().numpy())
        backbone.train(was)
        f = np.concatenate(out) if out else np.zeros((0, 1))
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    def __call__(self, backbone, device) -> float:
        from sklearn.metrics import balanced_accuracy_score
        from sklearn.model_selection import GroupKFold
        from sklearn.neighbors import KNeighborsClassifier

        if len(set(self.y.tolist())) < 2 or len(set(self.groups.tolist())) < 5:
            return float("nan")
        f = self.features(backbone, device)
        pred = np.empty_like(self.y)
        for train, test in GroupKFold(n_splits=5).split(f, self.y, self.groups):
            knn = KNeighborsClassifier(n_neighbors=min(self.k, len(train)), metric="cosine").fit(f[train], self.y[train])
            pred[test] = knn.predict(f[test])
        return float(balanced_accuracy_score(self.y, pred))
