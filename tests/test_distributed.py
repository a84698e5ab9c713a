"""Training each fold on 2 processes (torchrun, DistributedDataParallel over gloo on the CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lnzoo.train.distributed import RankShard, World, per_rank_batch
from lnzoo.errors import UsageError
from tests.conftest import REPO, TINY, run_cli

SETS = [*TINY, "cv.run_folds=[0]", "train.threads=1", "data.phantom.external=false"]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_each_process_takes_its_share_of_the_same_global_order():
    gen = [torch.Generator().manual_seed(3) for _ in range(2)]
    shards = [list(RankShard(torch.utils.data.RandomSampler(range(11), generator=g), World(r, 2))) for r, g in
              zip(range(2), gen)]
    whole = list(torch.utils.data.RandomSampler(range(11), generator=torch.Generator().manual_seed(3)))
    assert len(shards[0]) == len(shards[1]) == 5  # cut to a multiple of the world size: equal steps
    assert shards[0] == whole[0:10:2] and shards[1] == whole[1:10:2]
    assert not set(shards[0]) & set(shards[1])
    assert per_rank_batch(16, World(0, 2)) == 8
    with pytest.raises(UsageError, match="does not split over 3 processes"):
        per_rank_batch(16, World(0, 3))


@pytest.fixture(scope="module")
def pair(tmp_path_factory, lnzoo_cache) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("ddp")
    sets = [x for s in SETS for x in ("--set", s)]
    (root / "tmp").mkdir()
    env = {**os.environ, "LNZOO_CACHE": str(lnzoo_cache), "COLUMNS": "200", "TMPDIR": str(root / "tmp")}
    one = run_cli("run", str(REPO / "recipes" / "stage1_aux.toml"), "--quick", *sets, "--n-boot", "50",
                  "--out", str(root / "one"), env={"LNZOO_CACHE": str(lnzoo_cache)})
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "lnzoo", "run", str(REPO / "recipes" / "stage1_aux.toml"), "--quick", *sets,
                          "--n-boot", "50", "--out", str(root / "two")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    return root / "one", root / "two", two


def test_two_processes_write_the_run_one_process_writes(pair):
    one, two, done = pair
    # the same files; the report's Grad-CAM examples are the most confident cases, which two models may pick apart
    named = [[f for f in _files(d) if not f.startswith("explain/")] for d in (one, two)]
    assert named[0] == named[1]
    assert len(_files(two)) == len(_files(one))
    assert (two / "folds.csv").read_bytes() == (one / "folds.csv").read_bytes()  # the same patient folds
    info = json.loads((two / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["distributed"] == {"processes": 2, "backend": "gloo", "per_process_batch": 8, "sync_bn": False}
    a, b = (json.loads((d / "metrics.json").read_text())["cross_validation"] for d in (one, two))
    fa, fb = a["folds"][0], b["folds"][0]
    assert (fa["n_train"], fa["n_validation"], fa["n_held_out"]) == (fb["n_train"], fb["n_validation"], fb["n_held_out"])
    # the same data and schedule; only the BatchNorm statistics (per process's 8 images) and the order within a
    # global batch differ, so the held-out AUC agrees within a tolerance stated for a tiny 2-epoch model
    assert abs(a["pooled"]["malignancy"]["auc"] - b["pooled"]["malignancy"]["auc"]) <= 0.25
    assert done.stdout.count("lnzoo run ") == 1  # one process prints
    assert not list((two.parent / "tmp").glob("lnzoo-rank1-*"))  # rank 1's scratch folder is gone


def test_lnzoo_run_nproc_starts_torchrun_and_refuses_what_cannot_split(tmp_path):
    done = run_cli("run", str(REPO / "recipes" / "stage1_aux.toml"), "--quick", "--nproc", "3",
                   *[x for s in SETS for x in ("--set", s)], "--out", str(tmp_path / "three"))
    assert done.returncode != 0 and "does not split over 3 processes" in done.stderr
    assert not (tmp_path / "three").exists()  # refused before anything was written


def _rank0_json_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from lnzoo.train.distributed import rank0_json

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:  # each process fitted its own vocabulary numbering: every one takes rank 0's
        got = rank0_json([{"name": "report", "state": {"tokenizer": f"numbered by rank {rank}"}}])
        Path(out, f"rank{rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_every_process_takes_rank_0s_fitted_inputs(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank0_json_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1] == [{"name": "report", "state": {"tokenizer": "numbered by rank 0"}}]
