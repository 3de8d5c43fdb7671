"""``bench-unet serve``: throughput and latency of Triton and ``segment-unet serve`` on the same model.

Serves an exported Triton repository (``export-unet --triton-repo``) with
Triton Inference Server and/or ``segment-unet serve``, one server at a time
on the loopback interface, and loads each at every ``--concurrency`` over
HTTP and gRPC. The load comes from Triton's ``perf_analyzer`` when it is
installed (``UNET_PERF_ANALYZER`` or on PATH), otherwise from this module's
own clients (``TritonSegmenter`` threads, each mask checked against a local
``Segmenter``). Beside them, the in-process ceiling: ``Segmenter.run`` on
the same model in this process, before and after the servers. Both
servers' statistics say which batch sizes they formed.

    bench-unet serve --repo triton_repo --out benchmarks/results/serve-cpu
"""

from __future__ import annotations

import concurrent.futures
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from .report import begin_run, header_lines, results_parser, save_results

__all__ = ["free_ports", "start_server", "find_perf_analyzer", "main"]

SERVERS = ("builtin", "triton")
PROTOCOLS = ("http", "grpc")
ENV_PERF_ANALYZER = "UNET_PERF_ANALYZER"


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on the loopback interface now (the OS picks them; closed again at return)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_server(
    model: Path,
    max_batch: int,
    providers: str,
    log: Path,
    timeout_s: float = 120,
    name: str = "vgg19_unet",
):
    """``segment-unet serve MODEL`` in a child on free loopback ports, once it reports ready.

    Returns ``(process, {"http": "127.0.0.1:PORT", "grpc": ...})``; the
    server's output goes to ``log``. Raises RuntimeError with the log's end
    if it exits or is not ready within ``timeout_s``.
    """
    http, grpc = free_ports(2)
    argv = [sys.executable, "-m", "unet_runtime.cli", "serve", str(model), "--name", name]
    argv += ["--http-port", str(http), "--grpc-port", str(grpc)]
    argv += ["--max-batch-size", str(max_batch), "--providers", providers]
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
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


def find_perf_analyzer() -> str | None:
    """Triton's perf_analyzer: ``UNET_PERF_ANALYZER`` if set, else the one on PATH, else None."""
    return os.environ.get(ENV_PERF_ANALYZER) or shutil.which("perf_analyzer")


# --------------------------------------------------------------------------- the ceiling
def in_process(model: Path, batch: int, runs: int) -> dict:
    """``Segmenter.run`` on one prepared batch, ``runs`` times after a warm-up: the server-less figure."""
    from unet_runtime import Segmenter

    with Segmenter(model, providers="cpu") as seg:
        size = seg.info.size or (512, 512)
        rng = np.random.default_rng(0)
        x = seg.engine.prepare([rng.integers(0, 256, (*size, 3), dtype=np.uint8)] * batch)
        seg.engine.run(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            seg.engine.run(x)
            times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    median = float(np.median(ms))
    return {
        "batch": batch,
        "runs": runs,
        "median_ms": median,
        "images_per_s": batch * 1e3 / median,
        "samples_ms": [round(v, 3) for v in ms.tolist()],
    }


# --------------------------------------------------------------------------- load generators
def perf_analyzer_row(
    tool: str,
    model: str,
    address: str,
    protocol: str,
    concurrency: int,
    interval_ms: int,
    stability: int = 20,
) -> dict:
    """One perf_analyzer measurement at one concurrency; its CSV figures (latencies in ms)."""
    with tempfile.TemporaryDirectory(prefix="bench-pa-") as tmp:
        csv_path = Path(tmp) / "pa.csv"
        argv = [tool, "-m", model, "-u", address, "-i", protocol, "-b", "1"]
        argv += [f"--concurrency-range={concurrency}:{concurrency}", "-p", str(interval_ms)]
        # Stable = three windows within `stability` %; a 2-core machine running the server and the
        # load generator at once rarely stays within perf_analyzer's default 10%.
        argv += ["-s", str(stability), "-r", "6", "-f", str(csv_path)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30 * interval_ms / 1e3)
        rows = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
    row: dict = {"command": " ".join(argv[1:]), "exit_code": proc.returncode}
    if not rows:
        return {**row, "error": (proc.stdout + proc.stderr)[-1500:]}
    (r,) = rows
    return {
        **row,
        "images_per_s": float(r["Inferences/Second"]),
        **{f"p{p}_ms": float(r[f"p{p} latency"]) / 1e3 for p in (50, 90, 99)},
    }


def clients_row(
    model: str, address: str, protocol: str, concurrency: int, requests: int, images, expected
) -> dict:
    """``concurrency`` TritonSegmenter threads x ``requests`` each; every mask checked."""
    from unet_runtime.triton_client import TritonSegmenter

    start = threading.Barrier(concurrency)

    def client(i: int) -> tuple[list[float], int]:
        times, wrong = [], 0
        with TritonSegmenter(address, model, protocol=protocol, timeout_s=600) as c:
            start.wait(timeout=600)
            for k in range(requests):
                j = (i + k) % len(images)
                t0 = time.perf_counter()
                mask = c.predict(images[j])
                times.append(time.perf_counter() - t0)
                wrong += not np.array_equal(mask, expected[j])
        return times, wrong

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - t0
    ms = np.concatenate([np.asarray(t) for t, _ in results]) * 1e3
    return {
        "requests": len(ms),
        "images_per_s": len(ms) / wall,
        **{f"p{p}_ms": float(np.percentile(ms, p)) for p in (50, 90, 99)},
        "wrong_masks": sum(w for _, w in results),
        "latencies_ms": [round(v, 3) for v in ms.tolist()],
    }


def paired_overhead(model: Path, urls: dict, name: str, rounds: int) -> dict:
    """What a server adds to the model, measured in pairs: each round runs the model in this process,
    then sends the same prepared tensor once over HTTP and once over gRPC (one at a time, so nothing
    competes); the per-round differences give the added milliseconds without the machine's drift.
    """
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from unet_runtime import Segmenter
    from unet_runtime.wire import by_numpy

    with Segmenter(model, providers="cpu") as seg:
        size = seg.info.size or (512, 512)
        x = seg.engine.prepare([np.random.default_rng(2).integers(0, 256, (*size, 3), np.uint8)])
        clients = {
            "http": httpclient.InferenceServerClient(urls["http"], network_timeout=600),
            "grpc": grpcclient.InferenceServerClient(urls["grpc"]),
        }
        datatype = by_numpy(x.dtype).datatype
        times: dict[str, list[float]] = {"in_process": [], "http": [], "grpc": []}
        try:
            for _ in range(rounds + 1):  # the first round warms every path up, and is dropped
                t0 = time.perf_counter()
                seg.engine.run(x)
                times["in_process"].append(time.perf_counter() - t0)
                for protocol, client in clients.items():
                    tc = httpclient if protocol == "http" else grpcclient
                    inp = tc.InferInput(seg.engine.input_spec.name, list(x.shape), datatype)
                    inp.set_data_from_numpy(
                        x, **({"binary_data": True} if protocol == "http" else {})
                    )
                    t0 = time.perf_counter()
                    client.infer(name, [inp])
                    times[protocol].append(time.perf_counter() - t0)
        finally:
            for client in clients.values():
                client.close()
    ms = {k: np.asarray(v[1:]) * 1e3 for k, v in times.items()}
    out: dict = {"rounds": rounds, "in_process_median_ms": float(np.median(ms["in_process"]))}
    rng = np.random.default_rng(0)
    for protocol in ("http", "grpc"):
        diff = ms[protocol] - ms["in_process"]
        # 95% interval of the median difference by bootstrap (2000 resamples of the rounds)
        boots = np.median(rng.choice(diff, (2000, len(diff))), axis=1)
        out[protocol] = {
            "median_ms": float(np.median(ms[protocol])),
            "added_ms": float(np.median(diff)),
            "added_ci95_ms": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "added_share": float(np.median(diff) / np.median(ms["in_process"])),
        }
    out["samples_ms"] = {k: [round(v, 3) for v in a.tolist()] for k, a in ms.items()}
    return out


# --------------------------------------------------------------------------- the run
def _batches(http: str, model: str) -> dict[int, int]:
    """Model runs per batch size so far, from the server's statistics (Triton's extension; ours too)."""
    import json

    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=30) as r:
        (stats,) = json.load(r)["model_stats"]
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


def _serve(kind: str, repo: Path, name: str, max_batch: int, log: Path):
    """Start one server; returns (addresses, stop function)."""
    if kind == "builtin":
        proc, urls = start_server(
            repo / name / "1" / "model.onnx", max_batch, "cpu", log, name=name
        )

        def stop():
            proc.terminate()
            return proc.wait(timeout=60)

        return urls, stop
    from .tritonserver import locate, start_triton

    install, missing = locate()
    if install is None:
        raise RuntimeError(f"--servers triton: {missing}")
    server = start_triton(install, repo, log, timeout_s=300)
    return {"http": server.http, "grpc": server.grpc}, server.stop


def run(args) -> dict:
    """Every (server, protocol, concurrency) row, and the in-process ceiling before and after."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from unet_runtime import Segmenter

    config = text_format.Parse(
        (args.repo / args.name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    model = args.repo / args.name / "1" / "model.onnx"
    max_batch = config.max_batch_size
    tool = None if args.load == "clients" else find_perf_analyzer()
    ceiling_before = [in_process(model, b, args.runs) for b in sorted({1, max_batch})]
    with Segmenter(model, providers="cpu") as seg:
        size = seg.info.size or (512, 512)
        rng = np.random.default_rng(1)
        images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(8)]
        expected = seg.predict(images)
    rows = []
    paired: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for kind in args.servers:
            urls, stop = _serve(kind, args.repo, args.name, max_batch, Path(tmp) / kind)
            try:
                if args.paired_rounds:
                    paired[kind] = paired_overhead(model, urls, args.name, args.paired_rounds)
                for protocol in args.protocols:
                    for c in args.concurrency:
                        # The model's own time right before the row: a 2-core VM drifts by ~10% over
                        # minutes, so each row is compared with its neighbour, not a global figure.
                        base = in_process(model, 1, args.runs)
                        before = _batches(urls["http"], args.name)
                        if tool:
                            r = perf_analyzer_row(
                                tool,
                                args.name,
                                urls[protocol],
                                protocol,
                                c,
                                args.interval_ms,
                                args.stability,
                            )
                        else:
                            r = clients_row(
                                args.name,
                                urls[protocol],
                                protocol,
                                c,
                                args.requests,
                                images,
                                expected,
                            )
                        after = _batches(urls["http"], args.name)
                        r["batches_formed"] = {
                            b: n - before.get(b, 0)
                            for b, n in sorted(after.items())
                            if n > before.get(b, 0)
                        }
                        rows.append(
                            {
                                "server": kind,
                                "protocol": protocol,
                                "concurrency": c,
                                "model_ms": base["median_ms"],
                                "model_samples_ms": base["samples_ms"],
                                **r,
                            }
                        )
                        print(_row_line(rows[-1]), flush=True)
            finally:
                code = stop()
            rows.append({"server": kind, "stopped_with": code})
    ceiling_after = [in_process(model, b, args.runs) for b in sorted({1, max_batch})]
    return {
        "model": str(model),
        "size": list(size),
        "max_batch_size": max_batch,
        "load": "perf_analyzer" if tool else "clients",
        "perf_analyzer": tool,
        "in_process": {"before": ceiling_before, "after": ceiling_after},
        "paired": paired,
        "rows": rows,
    }


def _row_line(r: dict) -> str:
    if "error" in r:
        return f"{r['server']} {r['protocol']} c={r['concurrency']}: no measurement ({r['error'][-200:]!r})"
    return (
        f"{r['server']} {r['protocol']} c={r['concurrency']}: {r['images_per_s']:.2f} img/s, "
        f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms {r.get('batches_formed', '')}"
    )


def table(meta: dict, r: dict) -> str:
    """The Markdown of a run: the ceiling, every row as a share of it, and per server its best share and its added latency."""
    ceiling = max(c["images_per_s"] for c in r["in_process"]["before"] + r["in_process"]["after"])
    lines = [
        *header_lines("bench-unet serve", meta),
        f"Model: `{Path(r['model']).name}` {r['size'][0]}x{r['size'][1]}, max_batch_size "
        f"{r['max_batch_size']}, ONNX Runtime on the CPU in every server. Load: {r['load']} "
        "(batch 1 per request), on the same machine as the server (they share its cores). One "
        "server runs at a time.",
        "",
        "In process (`Segmenter.run`, no server), before and after the servers:",
        "",
        "| when | batch | median ms | images/s |",
        "|---|---|---|---|",
    ]
    for when in ("before", "after"):
        for c in r["in_process"][when]:
            lines.append(
                f"| {when} | {c['batch']} | {c['median_ms']:.1f} | {c['images_per_s']:.2f} |"
            )
    lines += [
        "",
        f"Ceiling: {ceiling:.2f} images/s (the best in-process row). Each server row is preceded "
        "by its own in-process batch-1 measurement (model ms, the median), to which its p50 is "
        "compared.",
        "",
        "| server | protocol | concurrency | images/s | % of ceiling | p50 ms | p90 ms | p99 ms | "
        "model ms | p50 over model | batches formed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        if "concurrency" not in row:
            continue
        if "error" in row:
            lines.append(
                f"| {row['server']} | {row['protocol']} | {row['concurrency']} | no stable "
                "measurement | | | | | | | |"
            )
            continue
        formed = ", ".join(f"{b}: {n}" for b, n in (row.get("batches_formed") or {}).items())
        lines.append(
            f"| {row['server']} | {row['protocol']} | {row['concurrency']} | "
            f"{row['images_per_s']:.2f} | {100 * row['images_per_s'] / ceiling:.0f}% | "
            f"{row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['model_ms']:.1f} | {100 * (row['p50_ms'] / row['model_ms'] - 1):+.1f}% | "
            f"{formed or '-'} |"
        )
    lines.append("")
    if r.get("paired"):
        lines += [
            "What each server adds to one request at concurrency 1, measured in pairs: every round "
            "runs the model in process, then sends the same tensor once over HTTP and once over gRPC; "
            "added = median of the per-round differences, with its 95% bootstrap interval.",
            "",
            "| server | rounds | in process median ms | protocol | request median ms | added ms (95% CI) | added share |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, pr in r["paired"].items():
            for protocol in ("http", "grpc"):
                q = pr[protocol]
                lo, hi = q["added_ci95_ms"]
                lines.append(
                    f"| {kind} | {pr['rounds']} | {pr['in_process_median_ms']:.1f} | {protocol} | "
                    f"{q['median_ms']:.1f} | {q['added_ms']:+.1f} ({lo:+.1f} to {hi:+.1f}) | "
                    f"{100 * q['added_share']:+.1f}% |"
                )
        lines.append("")
    for kind in SERVERS:
        mine = [x for x in r["rows"] if x.get("server") == kind and "images_per_s" in x]
        if not mine:
            continue
        best = max(mine, key=lambda x: x["images_per_s"])
        one = [x for x in mine if x["concurrency"] == 1]
        added = min(x["p50_ms"] / x["model_ms"] for x in one) - 1 if one else float("nan")
        lines.append(
            f"- {kind}: best {best['images_per_s']:.2f} images/s = "
            f"{100 * best['images_per_s'] / ceiling:.0f}% of the ceiling "
            f"({best['protocol']}, concurrency {best['concurrency']}); at concurrency 1 its best "
            f"p50 is {100 * added:+.1f}% over the model's own latency."
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None, prog: str = "bench-unet serve") -> int:
    """Command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = results_parser(prog, __doc__)
    p.add_argument(
        "--repo", type=Path, required=True, help="a Triton repository (export-unet --triton-repo)"
    )
    p.add_argument("--name", help="the model in it (default: its only model)")
    p.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument(
        "--load",
        choices=("auto", "perf_analyzer", "clients"),
        default="auto",
        help="auto: perf_analyzer if found (UNET_PERF_ANALYZER or PATH), else our clients",
    )
    p.add_argument("--interval-ms", type=int, default=10000, help="perf_analyzer's window")
    p.add_argument(
        "--stability",
        type=int,
        default=20,
        help="perf_analyzer: % by which three windows may differ and still count as stable",
    )
    p.add_argument("--requests", type=int, default=10, help="clients: requests per client")
    p.add_argument(
        "--paired-rounds",
        type=int,
        default=20,
        help="rounds of the paired overhead measurement per server (0: none)",
    )
    p.add_argument(
        "--runs", type=int, default=8, help="in-process runs per measurement (before each row)"
    )
    args = p.parse_args(argv)
    problem = None
    models = sorted(c.parent.name for c in args.repo.glob("*/config.pbtxt"))
    if not models:
        problem = f"--repo {str(args.repo)!r} holds no model (no NAME/config.pbtxt)"
    elif args.name is None and len(models) > 1:
        problem = f"--repo holds {sorted(models)}: choose one with --name"
    elif args.name is not None and args.name not in models:
        problem = f"--name {args.name!r} is not in --repo; it holds {sorted(models)}"
    elif min(args.concurrency + [args.requests, args.runs, args.interval_ms]) < 1:
        problem = "--concurrency, --requests, --runs and --interval-ms must be >= 1"
    elif args.paired_rounds < 0:
        problem = f"--paired-rounds {args.paired_rounds} must be >= 0"
    elif args.load == "perf_analyzer" and not find_perf_analyzer():
        problem = (
            f"--load perf_analyzer: none found; set {ENV_PERF_ANALYZER} to its path "
            "(tritonclient's wheel ships it) or use --load clients"
        )
    args.name = args.name or (models[0] if models else None)
    meta = begin_run(prog, argv, args.out, problem)
    if meta is None:
        return 1
    r = run(args)
    save_results(args.out, {**meta, **r}, table(meta, r))
    failed = any("error" in x or x.get("wrong_masks") for x in r["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
