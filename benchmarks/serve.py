"""Throughput and latency of ``lnzoo serve``'s POST /api/predict, against the model's own forward pass.

    python benchmarks/serve.py MODEL [--requests 64] [--clients 1 4 16] [--rounds 8] [--port 8765]
                                     [--engines torch onnx]

Starts ``python -m lnzoo serve MODEL`` on 127.0.0.1, waits for /healthz, then sends a fixed number of
requests (``gradcam=false``, one phantom image of the run's predictions.csv each). One client runs in
``--rounds`` rounds, each followed by as many images through the first fold model's raw torch forward pass
(batch 1, with and without decoding) in this process while the server idles: the two alternate, so a drift
in this machine's speed touches both alike. Then 4 and 16 concurrent clients. Prints requests/s and
p50/p95 latency per level, the one-client ratio to the forward pass, and the server's resident memory
(VmRSS and VmHWM of /proc/PID/status) with the model loaded. Prints a table; asserts nothing.

A model to measure: ResNet-18 at 224 px, one epoch, one fold (pretrained weights are not downloaded)::

    lnzoo run recipes/stage1_aux.toml --quick --set "model.backbone={name='timm', model_name='resnet18', pretrained=false}" \
        --set data.image_size=224 --set train.epochs=1 --set "cv.run_folds=[0]" --out runs/r18

Each engine gets its own server, one after the other, on the same requests: torch, and ONNX Runtime when
MODEL is a bundle exported with ``--onnx`` (``lnzoo export runs/r18 --out models/r18 --onnx``).
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def images_of(run: Path, n: int) -> list[Path]:
    with (run / "predictions.csv").open(newline="") as fh:
        paths = [Path(r["path"]) for r in csv.DictReader(fh)]
    return (paths * (n // max(len(paths), 1) + 1))[:n]


def multipart(image: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"full\"; filename=\"{image.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + image.read_bytes() + \
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"gradcam\"\r\n\r\nfalse\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str) -> float:
    start = time.perf_counter()
    req = urllib.request.Request(url + "api/predict", data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - start


def load_level(url: str, bodies: list[tuple[bytes, str]], clients: int) -> dict[str, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(lambda b: post(url, *b), bodies))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"rps": len(bodies) / wall, "p50": q[49] * 1e3, "p95": q[94] * 1e3}


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"lnzoo serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("lnzoo serve did not start")


def memory_of(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


class Reference:
    """The first fold model's own torch forward pass at batch 1, loaded as ``lnzoo serve`` loads it."""

    def __init__(self, run: Path, images: list[Path]):
        import torch

        from lnzoo.data.samples import Sample
        from lnzoo.predict import Ensemble

        self.torch = torch
        predictor = Ensemble([run]).members[0]
        self.ds = predictor.dataset([Sample({predictor.views[0]: p}, "", {}, str(p)) for p in images])
        self.model = predictor.model.eval()
        self.rounds(1)  # warm-up

    def rounds(self, n: int) -> tuple[float, float]:
        """Seconds for ``n`` images: decode + preprocess + forward, and forward alone."""
        with self.torch.no_grad():
            start = time.perf_counter()
            for i in range(n):
                x, present, _, _, extra = self.ds[i % len(self.ds)]
                extra = {k: v[None] for k, v in extra.items()}
                self.model(x[None], present[None], extra)
            with_decode = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(n):
                self.model(x[None], present[None], extra)
            return with_decode, time.perf_counter() - start


def measure(model: Path, engine: str, port: int, bodies: list[tuple[bytes, str]], clients: list[int],
            reference: Reference, rounds: int) -> dict:
    """Start lnzoo serve on ``model`` with ``engine``; one client in ``rounds`` rounds alternating with the
    reference forward pass (so drift of this machine's speed cancels), then each client level; stop it."""
    cmd = [sys.executable, "-m", "lnzoo", "serve", str(model), "--port", str(port), "--engine", engine]
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        wait_healthy(url, proc)
        loaded = memory_of(proc.pid)
        post(url, *bodies[0])  # warm-up
        served = decode = forward = 0.0
        latencies: list[float] = []
        ratios: list[float] = []  # served / forward-only throughput, round by round: how noisy the machine was
        per_round = max(len(bodies) // rounds, 1)
        for r in range(rounds):
            part = bodies[r * per_round:(r + 1) * per_round]
            start = time.perf_counter()
            latencies += [post(url, *b) for b in part]
            took = time.perf_counter() - start
            served += took
            d, f = reference.rounds(len(part))
            decode, forward = decode + d, forward + f
            ratios.append(f / took)
        n = per_round * rounds
        q = statistics.quantiles(sorted(latencies), n=100, method="inclusive")
        one = {"rps": n / served, "p50": q[49] * 1e3, "p95": q[94] * 1e3,
               "ref_decode": n / decode, "ref_forward": n / forward, "round_ratios": (min(ratios), max(ratios))}
        levels = {c: load_level(url, bodies, c) for c in clients if c != 1}
        return {"one": one, "levels": {1: one, **levels}, "loaded": loaded, "after": memory_of(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="a run directory, or a bundle (lnzoo export --onnx for the onnx engine)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--engines", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    ap.add_argument("--rounds", type=int, default=8, help="one-client rounds alternating with the reference")
    args = ap.parse_args()

    from lnzoo.bundle import checkpoints_of

    run = args.model
    with_onnx = all(c.with_suffix(".onnx").is_file() for c in checkpoints_of(run))
    engines = [e for e in args.engines if e == "torch" or with_onnx]
    source = run
    if (run / "config.json").is_file():  # a bundle: the images come from the run it was exported from
        import json
        source = Path(json.loads((run / "config.json").read_text())["exported"]["from"])
    images = images_of(source, args.requests)
    bodies = [multipart(p) for p in images]
    reference = Reference(run, images[:min(args.requests, 64)])
    results = {e: measure(run, e, args.port + i, bodies, args.clients, reference, args.rounds)
               for i, e in enumerate(engines)}

    print(f"lnzoo serve {run}, {args.requests} requests per level, gradcam=false, {os.cpu_count()} CPU cores"
          + ("" if with_onnx else " (no .onnx beside the models: torch only)"))
    print(f"{'engine':>7} {'clients':>8} {'requests/s':>11} {'p50 ms':>8} {'p95 ms':>8}")
    for e, r in results.items():
        for c, m in sorted(r["levels"].items()):
            print(f"{e:>7} {c:>8} {m['rps']:>11.1f} {m['p50']:>8.1f} {m['p95']:>8.1f}")
    for e, r in results.items():
        one = r["one"]
        print(f"{e}: one client {one['rps']:.1f} req/s against the first fold model's torch forward pass at batch 1 "
              f"in alternating rounds: {one['ref_forward']:.1f} images/s forward only "
              f"({one['rps'] / one['ref_forward']:.2f}x), {one['ref_decode']:.1f} images/s with decoding "
              f"({one['rps'] / one['ref_decode']:.2f}x); forward-only ratio per round "
              f"{one['round_ratios'][0]:.2f}-{one['round_ratios'][1]:.2f}x")
        print(f"{e}: server memory VmRSS {r['loaded']['VmRSS']:.0f} MiB loaded, {r['after']['VmRSS']:.0f} MiB after "
              f"the load test (peak {r['after']['VmHWM']:.0f} MiB)")
    if len(results) == 2:
        print(f"onnx / torch requests/s at one client: {results['onnx']['one']['rps'] / results['torch']['one']['rps']:.2f}")


if __name__ == "__main__":
    main()
