"""Training: the fit loop (:mod:`.loop`), EMA and mean-teacher helpers (:mod:`.averaging`), the linear
probe (:mod:`.probe`), seeds, optimiser and schedule (:mod:`.schedule`). Only the pipeline imports it."""
from lnzoo.inference import pick_device
from lnzoo.train.loop import FoldResult, Trainer
from lnzoo.train.schedule import make_optimizer, make_scheduler, seed_everything, warmup_cosine

__all__ = ["FoldResult", "Trainer", "make_optimizer", "make_scheduler", "pick_device", "seed_everything",
           "warmup_cosine"]
