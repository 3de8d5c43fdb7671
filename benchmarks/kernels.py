"""``bench-unet lab kernels``: where a GPU run's time goes, kernel by kernel.

Runs ``Segmenter.run`` on one prepared batch (IO binding, optionally a CUDA
graph, as an application does) under PyTorch's profiler, which reads the
CUDA kernels ONNX Runtime launches through CUPTI, and sums them per kernel
name: calls and milliseconds per run, the share of the kernel time, and the
gap between the wall time of a run and the kernel time in it (launches,
synchronization, host work). Needs torch (for its profiler only; the model
runs on ONNX Runtime). Without a CUDA device it records the CPU run and
says that there were no CUDA kernels to read.

    bench-unet lab kernels models/fp16-argmax-512-u8.onnx --providers cuda --cuda-graph --out results/h100-kernels
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .report import begin_run, header_lines, model_problem, results_parser, save_results

__all__ = ["main", "profile_kernels"]


def profile_kernels(model: Path, providers, *, batch: int, runs: int, cuda_graph: bool) -> dict:
    """Kernel times per run of ``model`` (see the module doc); every figure the table shows, and more."""
    import torch.profiler as tp

    from unet_runtime import ProviderConfig, Segmenter

    from .weights import materialize

    with tempfile.TemporaryDirectory(prefix="bench-kernels-") as tmp:
        path = materialize(model, tmp)
        config = ProviderConfig(cuda_graph=cuda_graph)
        with Segmenter(path, providers=providers, config=config) as seg:
            size = seg.info.size or (512, 512)
            images = [np.zeros((*size, 3), np.uint8)] * batch
            call = seg.engine.bind(seg.engine.prepare(images))
            for _ in range(5):  # warm-up: kernel selection, the CUDA graph's capture
                call.run()
            activities = [tp.ProfilerActivity.CPU]
            on_gpu = seg.providers[0] != "CPUExecutionProvider"
            if on_gpu:
                activities.append(tp.ProfilerActivity.CUDA)
            with tp.profile(activities=activities) as prof:
                t0 = time.perf_counter()
                for _ in range(runs):
                    call.run()
                wall_ms = (time.perf_counter() - t0) * 1e3 / runs
            providers_used = list(seg.providers)
    per: dict = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if on_gpu and getattr(e, "device_type", None) == _cuda_device_type():
            per[e.name][0] += 1
            per[e.name][1] += e.time_range.elapsed_us() / 1e3  # a kernel's own span on the device
    kernels = sorted(
        (
            {"kernel": k, "calls_per_run": n / runs, "ms_per_run": ms / runs}
            for k, (n, ms) in per.items()
        ),
        key=lambda r: -r["ms_per_run"],
    )
    kernel_ms = sum(r["ms_per_run"] for r in kernels)
    return {
        "model": model.name,
        "providers": providers_used,
        "batch": batch,
        "runs": runs,
        "cuda_graph": cuda_graph,
        "wall_ms_per_run": wall_ms,
        "kernel_ms_per_run": kernel_ms,
        "gap_ms_per_run": wall_ms - kernel_ms if kernels else None,
        "kernels": kernels,
        "note": "" if kernels else "no CUDA kernels were recorded (no CUDA provider ran)",
    }


def _cuda_device_type():
    from torch.autograd import DeviceType

    return DeviceType.CUDA


def main(argv: list[str] | None = None, prog: str = "bench-unet lab kernels") -> int:
    """Command line; returns the exit code."""
    import importlib.util

    from unet_runtime.providers import parse_providers

    argv = list(sys.argv[1:] if argv is None else argv)
    p = results_parser(prog, __doc__)
    p.add_argument(
        "model", type=Path, help="the .onnx model (weight-free copies get seeded weights)"
    )
    p.add_argument("--providers", default="cuda", help="'auto' or a comma list (cuda,cpu)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=20, help="profiled runs after 5 warm-up runs")
    p.add_argument(
        "--cuda-graph", action="store_true", help="replay a CUDA graph, as the fast path"
    )
    p.add_argument("--top", type=int, default=20, help="kernels listed")
    args = p.parse_args(argv)
    problem = model_problem(args.model, "MODEL")
    if not problem and importlib.util.find_spec("torch") is None:
        problem = (
            "bench-unet lab kernels reads CUDA kernels with PyTorch's profiler: pip install torch"
        )
    if not problem and min(args.batch, args.runs, args.top) < 1:
        problem = "--batch, --runs and --top must be >= 1"
    meta = begin_run(prog, argv, args.out, problem)
    if meta is None:
        return 1
    r = profile_kernels(
        args.model,
        parse_providers(args.providers),
        batch=args.batch,
        runs=args.runs,
        cuda_graph=args.cuda_graph,
    )
    gap = r["gap_ms_per_run"]
    lines = [
        *header_lines(prog, meta),
        f"`{r['model']}` on {', '.join(r['providers'])}, batch {r['batch']}, CUDA graph "
        f"{'on' if r['cuda_graph'] else 'off'}, {r['runs']} profiled runs: wall "
        f"{r['wall_ms_per_run']:.3f} ms/run, kernels {r['kernel_ms_per_run']:.3f} ms/run"
        + (f", gap {gap:.3f} ms ({gap / r['wall_ms_per_run']:.0%})" if gap is not None else "")
        + (f". {r['note']}" if r["note"] else ""),
        "",
        "| kernel | calls/run | ms/run | share |",
        "|---|---|---|---|",
    ]
    for k in r["kernels"][: args.top]:
        share = k["ms_per_run"] / r["kernel_ms_per_run"] if r["kernel_ms_per_run"] else 0
        lines.append(
            f"| `{k['kernel'][:100].replace('|', '/')}` | {k['calls_per_run']:.1f} | "
            f"{k['ms_per_run']:.3f} | {share:.1%} |"
        )
    save_results(args.out, {**meta, **r}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
