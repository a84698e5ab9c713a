"""Throughput and latency of ``lnzoo serve``'s POST /api/predict, against the model's own forward pass.

    python benchmarks/serve.py MODEL [--requests 64] [--clients 1 4 16] [--port 8765] [--engines torch onnx]

Starts ``python -m lnzoo serve RUN`` on 127.0.0.1, waits for /healthz, then sends a fixed number of
requests (``gradcam=false``, one phantom image of the run's predictions.csv each) from 1, 4 and 16
concurrent clients and prints requests/s and p50/p95 latency per level; then the same model's raw forward
pass (batch 1, with and without decoding the image) in this process, and the server's resident memory
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


def forward_reference(run: Path, images: list[Path], repeats: int) -> dict[str, float]:
    """Images/s of the first fold model at batch 1: decode + preprocess + forward, and forward alone."""
    import torch

    from lnzoo.data.samples import Sample
    from lnzoo.predict import Ensemble

    predictor = Ensemble([run]).members[0]  # loaded as lnzoo serve loads it
    ds = predictor.dataset([Sample({"full": p}, "", {}, str(p)) for p in images[:repeats]])
    model = predictor.model.eval()
    with torch.no_grad():
        x, present, _, _, tab = ds[0]
        model(x[None], present[None], tab[None])  # warm-up
        start = time.perf_counter()
        for i in range(len(ds)):
            x, present, _, _, tab = ds[i]
            model(x[None], present[None], tab[None])
        with_decode = len(ds) / (time.perf_counter() - start)
        x, present, _, _, tab = ds[0]
        x, present, tab = x[None], present[None], tab[None]
        start = time.perf_counter()
        for _ in range(len(ds)):
            model(x, present, tab)
        forward_only = len(ds) / (time.perf_counter() - start)
    return {"with_decode": with_decode, "forward_only": forward_only}


def measure(model: Path, engine: str, port: int, bodies: list[tuple[bytes, str]], clients: list[int]) -> dict:
    """Start lnzoo serve on ``model`` with ``engine``, load it at each client level, stop it."""
    cmd = [sys.executable, "-m", "lnzoo", "serve", str(model), "--port", str(port), "--engine", engine]
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        wait_healthy(url, proc)
        loaded = memory_of(proc.pid)
        post(url, *bodies[0])  # warm-up
        levels = {c: load_level(url, bodies, c) for c in clients}
        return {"levels": levels, "loaded": loaded, "after": memory_of(proc.pid)}
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
    results = {e: measure(run, e, args.port + i, bodies, args.clients) for i, e in enumerate(engines)}
    reference = forward_reference(run, images, min(args.requests, 64))

    print(f"lnzoo serve {run}, {args.requests} requests per level, gradcam=false, {os.cpu_count()} CPU cores"
          + ("" if with_onnx else " (no .onnx beside the models: torch only)"))
    print(f"{'engine':>7} {'clients':>8} {'requests/s':>11} {'p50 ms':>8} {'p95 ms':>8}")
    for e, r in results.items():
        for c, m in r["levels"].items():
            print(f"{e:>7} {c:>8} {m['rps']:>11.1f} {m['p50']:>8.1f} {m['p95']:>8.1f}")
    print(f"first fold model's torch forward pass, batch 1: {reference['with_decode']:.1f} images/s with decoding, "
          f"{reference['forward_only']:.1f} images/s forward only")
    one = min(args.clients)
    for e, r in results.items():
        print(f"{e}: one client {r['levels'][one]['rps'] / reference['with_decode']:.2f}x the forward pass with "
              f"decoding; server memory VmRSS {r['loaded']['VmRSS']:.0f} MiB loaded, {r['after']['VmRSS']:.0f} MiB "
              f"after the load test (peak {r['after']['VmHWM']:.0f} MiB)")
    if len(results) == 2:
        print(f"onnx / torch requests/s at one client: "
              f"{results['onnx']['levels'][one]['rps'] / results['torch']['levels'][one]['rps']:.2f}")


if __name__ == "__main__":
    main()
