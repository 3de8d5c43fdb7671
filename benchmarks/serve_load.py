"""``bench-unet serve``: latency and throughput of ``segment-unet serve`` under concurrent clients.

Starts the server on the loopback interface (a child process), then runs
``--clients`` threads, each with its own ``TritonSegmenter``, each sending
``--requests`` requests of ``--batch`` images at the model's size; every
mask is compared with a local ``Segmenter``'s. Records each request's
latency (client side: pre-processing, the request, post-processing), the
throughput, and the errors, with the machine.

    bench-unet serve --model model.onnx --out benchmarks/results/serve-cpu [--clients 8 --requests 20]
"""

from __future__ import annotations

import concurrent.futures
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from .report import begin_run, header_lines, model_problem, results_parser, save_results

__all__ = ["free_ports", "start_server", "load_test", "main"]


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on the loopback interface now (the OS picks them; closed again at return)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_server(model: Path, max_batch: int, providers: str, log: Path, timeout_s: float = 120):
    """``segment-unet serve MODEL`` in a child on free loopback ports, once it reports ready.

    Returns ``(process, {"http": "127.0.0.1:PORT", "grpc": ...})``; the
    server's output goes to ``log``. Raises RuntimeError with the log's end
    if it exits or is not ready within ``timeout_s``.
    """
    http, grpc = free_ports(2)
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "unet_runtime.cli",
                "serve",
                str(model),
                "--http-port",
                str(http),
                "--grpc-port",
                str(grpc),
                "--max-batch-size",
                str(max_batch),
                "--providers",
                providers,
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2):
                return proc, {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}"}
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(
        f"the server did not become ready in {timeout_s:.0f} s:\n" + log.read_text()[-3000:]
    )


def load_test(
    model: Path,
    *,
    clients: int,
    requests: int,
    batch: int,
    protocol: str,
    providers: str = "cpu",
    seed: int = 0,
) -> dict:
    """Run the load test (see the module doc); returns the figures and every latency."""
    from unet_runtime import Segmenter
    from unet_runtime.triton_client import TritonSegmenter

    with Segmenter(model, providers="cpu") as seg:
        size = seg.info.size or (512, 512)
        rng = np.random.default_rng(seed)
        images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(8)]
        expected = seg.predict(images)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        proc, urls = start_server(model, batch, providers, Path(tmp) / "server.log")
        try:

            def client(i: int) -> tuple[list[float], int]:
                times, wrong = [], 0
                proto = protocol if protocol != "both" else ("http" if i % 2 else "grpc")
                with TritonSegmenter(urls[proto], "vgg19_unet", protocol=proto, timeout_s=600) as c:
                    for k in range(requests):
                        idx = [(i + k + j) % len(images) for j in range(batch)]
                        t0 = time.perf_counter()
                        masks = c.predict([images[j] for j in idx])
                        times.append(time.perf_counter() - t0)
                        wrong += sum(
                            not np.array_equal(m, expected[j])
                            for m, j in zip(masks, idx, strict=True)
                        )
                return times, wrong

            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(client, range(clients)))
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            code = proc.wait(timeout=60)
    latencies = np.concatenate([np.asarray(t) for t, _ in results]) * 1e3
    return {
        "model": str(model),
        "size": list(size),
        "clients": clients,
        "requests_per_client": requests,
        "batch": batch,
        "protocol": protocol,
        "providers": providers,
        "wall_s": round(wall, 2),
        "requests": len(latencies),
        "images": len(latencies) * batch,
        "images_per_s": len(latencies) * batch / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p90_ms": float(np.percentile(latencies, 90)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "mean_ms": float(latencies.mean()),
        "wrong_masks": sum(w for _, w in results),
        "server_exit_code": code,
        "latencies_ms": [round(v, 3) for v in latencies.tolist()],
    }


def main(argv: list[str] | None = None, prog: str = "bench-unet serve") -> int:
    """Command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = results_parser(prog, __doc__)
    p.add_argument("--model", type=Path, required=True, help="the .onnx model to serve")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--requests", type=int, default=20, help="requests per client")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="images per request (also the server's --max-batch-size)",
    )
    p.add_argument(
        "--protocol",
        choices=("http", "grpc", "both"),
        default="both",
        help="both: half the clients each",
    )
    p.add_argument("--providers", default="cpu", help="the server's providers")
    args = p.parse_args(argv)
    problem = model_problem(args.model)
    if not problem and min(args.clients, args.requests, args.batch) < 1:
        problem = "--clients, --requests and --batch must be >= 1"
    meta = begin_run(prog, argv, args.out, problem)
    if meta is None:
        return 1
    r = load_test(
        args.model,
        clients=args.clients,
        requests=args.requests,
        batch=args.batch,
        protocol=args.protocol,
        providers=args.providers,
    )
    table = "\n".join(
        [
            *header_lines("bench-unet serve", meta),
            "segment-unet serve (KServe's Open Inference Protocol server) on the loopback interface, clients in the same "
            "machine (they share its cores); latency per request as a client sees it (pre-processing, request, "
            "post-processing).",
            "",
            "| model | size | server | clients x requests | batch | protocol | images/s | p50 ms | p90 ms | p99 ms | "
            "wrong masks | exit code |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {Path(r['model']).name} | {r['size'][0]}x{r['size'][1]} | {r['providers']} | {r['clients']} x "
            f"{r['requests_per_client']} | {r['batch']} | {r['protocol']} | {r['images_per_s']:.2f} | {r['p50_ms']:.1f} | "
            f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['wrong_masks']} | {r['server_exit_code']} |",
            "",
        ]
    )
    save_results(args.out, {**meta, **r}, table)
    return 0 if r["wrong_masks"] == 0 and r["server_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
