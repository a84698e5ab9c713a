"""Data-loading benchmark: loader images/s alone, model train images/s alone, and the fraction of
step time spent waiting for data in epoch >= 2 (after the image cache is warm); for a recipe with
morphology inputs, the cost of extracting the features in the first epoch against reading them from
the memory and the disk cache.

    python benchmarks/loader.py [--recipe recipes/stage1_aux.toml] [--image-size 224] [--workers 0]
                                [--batch-size 32] [--backbone resnet18] [--steps 20]
    python benchmarks/loader.py --recipe recipes/llnm_multimodal.toml     # + report text and morphology

Prints figures; it asserts nothing. Target: data wait <= 5% of step time for ResNet-18 at 224 px.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lnzoo.data.dataset import ImageCache, NodeDataset, build_augment
from lnzoo.data.images import Preprocessing
from lnzoo.model import build_model
from lnzoo.plugins import get_host
from lnzoo.recipe import load_recipe
from lnzoo.data.run_data import load_run_data, recipe_tasks
from lnzoo.inputs import fit_inputs
from lnzoo.train import Trainer, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "stage1_aux.toml"))
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--steps", type=int, default=20, help="training steps timed per measurement")
    ap.add_argument("--cache", default="memory", choices=("memory", "none"))
    args = ap.parse_args()

    host = get_host()
    recipe = load_recipe(args.recipe, host=host, sets=[
        f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
        f"model.backbone={{name='timm', model_name='{args.backbone}'}}", f"data.cache='{args.cache}'"])
    tasks = recipe_tasks(recipe, host)
    data = load_run_data(recipe, tasks, host=host)
    morphology_cost(data, host)
    inputs = fit_inputs(data.inputs, data.pool) if data.inputs else None
    cache = ImageCache(Preprocessing(args.image_size))
    t0 = time.perf_counter()
    if args.cache == "memory":
        cache.preload(data.pool)
    decode_s = time.perf_counter() - t0
    trainer = Trainer(recipe, host, tasks, cache)
    ds = NodeDataset(data.pool, recipe["data.views"], list(tasks), cache,
                     build_augment(recipe["data.augment"], args.image_size), inputs=inputs)
    loader = trainer.loader(ds, seed=0)

    def batches(n):
        it = iter(loader)
        for _ in range(n):
            try:
                yield next(it)
            except StopIteration:
                it = iter(loader)
                yield next(it)

    # 1. loader alone (cache warm: this is epoch >= 2)
    n_img, t0 = 0, time.perf_counter()
    for x, *_ in batches(args.steps):  # (views, present, labels, index, other inputs)
        n_img += len(x)
    loader_ips = n_img / (time.perf_counter() - t0)

    # 2. model alone on a fixed batch
    model = build_model(recipe, host, tasks, inputs)
    opt = make_optimizer(model, recipe["train"])
    x, present, y, _, extra = next(iter(loader))
    model.train()

    def step(x, present, extra):
        out = model(x, present, extra)
        loss = sum(o.float().logsumexp(1).mean() for o in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    step(x, present, extra)  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(x, present, extra)
    model_ips = args.steps * len(x) / (time.perf_counter() - t0)

    # 3. real steps: time waiting for the next batch vs the whole step
    wait = total = 0.0
    n_img = 0
    it = batches(args.steps)
    t_end = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        x, present, _, _, extra = next(it)
        t1 = time.perf_counter()
        step(x, present, extra)
        t2 = time.perf_counter()
        wait += t1 - t0
        total += t2 - t0
        n_img += len(x)
    del t_end
    print(f"images: {len(data.pool)} ({data.description}); decode + resize once: {decode_s:.1f} s "
          f"({len(data.pool) / max(decode_s, 1e-9):.0f} images/s)")
    print(f"backbone {args.backbone} at {args.image_size} px, batch {args.batch_size}, workers {args.workers}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"loader alone (augmentation, warm cache): {loader_ips:.0f} images/s")
    print(f"model train step alone:                  {model_ips:.1f} images/s")
    print(f"training with the loader:                {n_img / total:.1f} images/s; "
          f"waiting for data {100 * wait / total:.1f}% of step time")


def morphology_cost(data, host) -> None:
    """The first epoch's morphology extraction against the memory cache (epoch >= 2) and the disk cache (a new run
    on the same files), for each morphology input of the recipe."""
    import tempfile

    from lnzoo.data.morphology import MorphologyCache

    rows = [*data.pool, *data.test, *data.external]
    for name, (kind, table) in data.inputs.items():
        if table.get("name") != "morphology":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            fresh = type(kind)(**{k: v for k, v in table.items() if k != "name"})
            fresh._cache = MorphologyCache(Path(tmp))  # cold: nothing computed yet
            t0 = time.perf_counter()
            fresh.check(rows, [])
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            fresh.check(rows, [])
            memory = time.perf_counter() - t0
            fresh._cache = MorphologyCache(Path(tmp))  # a new run: the disk cache answers
            t0 = time.perf_counter()
            fresh.check(rows, [])
            disk = time.perf_counter() - t0
        print(f"morphology ({name}): first epoch {first:.2f} s for {len(rows)} rows ({1000 * first / len(rows):.1f} ms "
              f"each); from the memory cache {memory * 1000:.1f} ms; from the disk cache (a new run) {disk:.2f} s")


if __name__ == "__main__":
    main()
