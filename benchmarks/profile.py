"""Where the CPU time goes: ONNX Runtime's own profiler, summed per op type and per node.

On the CPU execution provider every node runs synchronously on the calling
threads, so the profiler's per-node durations add up to the run (unlike CUDA,
where launches are asynchronous, and a per-kernel profile comes from Nsight Systems or torch.profiler).
The summary answers the questions an INT8 graph raises: how much of the run
is convolution, and how much is QuantizeLinear/DequantizeLinear, layout
changes and float ops left between the integer kernels.

Usage:
    bench-unet lab profile MODEL.onnx [--runs 5] [--batch 1] [--out summary.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Profile:
    """Per-run averages from ORT's profiler (microseconds)."""

    runs: int
    run_us: float  # wall time of one session.run as the profiler saw it
    by_op: dict[str, float] = field(default_factory=dict)  # op type -> us per run
    # (name, op, us), slowest first
    by_node: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def op_nodes(self) -> dict[str, int]:
        """Op type -> node count."""
        return dict(Counter(op for _, op, _ in self.by_node))

    @property
    def node_us(self) -> float:
        """Sum of all node times per run; the rest of run_us is the executor's own overhead."""
        return sum(self.by_op.values())


def summarize(trace: list[dict], runs: int) -> Profile:
    """Average an ORT profile trace (its JSON events) over `runs` timed runs.

    Node events are `cat == "Node"` with names ending in `_kernel_time`;
    the run itself is the `model_run` session event. Warm-up runs must be
    excluded by the caller (start profiling after them).
    """
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, list] = {}
    run_total = 0.0
    for ev in trace:
        name = ev.get("name", "")
        if ev.get("cat") == "Session" and name == "model_run":
            run_total += ev["dur"]
        if ev.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        op = ev.get("args", {}).get("op_name", "?")
        node = name[: -len("_kernel_time")]
        by_op[op] += ev["dur"]
        by_node.setdefault(node, [op, 0.0])[1] += ev["dur"]
    nodes = sorted(((n, op, t / runs) for n, (op, t) in by_node.items()), key=lambda r: -r[2])
    return Profile(
        runs=runs,
        run_us=run_total / runs,
        by_op={k: v / runs for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        by_node=nodes,
    )


def profile_model(
    path: str,
    *,
    runs: int = 5,
    warmup: int = 2,
    batch: int = 1,
    threads: int | None = None,
    seed: int = 0,
) -> Profile:
    """Run `path` on ORT's CPU provider with the runtime's session options and profile `runs` runs.

    The session is built as `unet_runtime.Segmenter` builds it (all graph
    optimizations, one intra-op thread per physical core unless `threads`).
    The input is random data of the model's declared shape (dynamic dims:
    `batch`, then 512); the time of these models does not depend on values.
    """
    import onnxruntime as ort

    from unet_runtime.segmenter import session_options

    so = session_options(threads)
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: _random_input(sess.get_inputs()[0], batch, seed)}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            trace = json.load(f)
    # The profiler records from session creation; keep only the events after the warm-up runs.
    model_runs = sorted(
        (e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    if len(model_runs) != warmup + runs:
        raise RuntimeError(f"profiler saw {len(model_runs)} runs, expected {warmup + runs}")
    start = model_runs[warmup]["ts"]
    return summarize([e for e in trace if e.get("ts", 0) >= start], runs)


def _random_input(inp, batch: int, seed: int) -> np.ndarray:
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    dims = []
    for i, d in enumerate(shape):
        if d is not None:
            dims.append(d)
        elif i == 0:
            dims.append(batch)
        else:
            dims.append(512)
    rng = np.random.default_rng(seed)
    if "uint8" in inp.type:
        return rng.integers(0, 256, dims, dtype=np.uint8)
    if "float16" in inp.type:
        return rng.standard_normal(dims).astype(np.float16)
    return rng.standard_normal(dims).astype(np.float32)


def to_markdown(p: Profile, title: str, top: int = 15) -> str:
    """A per-op-type table (time, share, node count) and the `top` slowest nodes."""
    total = p.node_us
    lines = [
        f"## {title}",
        "",
        f"run (profiler's model_run): {p.run_us / 1e3:.1f} ms; sum of node times {total / 1e3:.1f} ms "
        f"(executor overhead {(p.run_us - total) / 1e3:.1f} ms); mean of {p.runs} runs",
        "",
        "| op type | nodes | ms/run | share |",
        "|---|---|---|---|",
    ]
    for op, us in p.by_op.items():
        lines.append(f"| {op} | {p.op_nodes.get(op, 0)} | {us / 1e3:.2f} | {us / total:.1%} |")
    lines += [
        "",
        f"Slowest {top} nodes:",
        "",
        "| node | op | ms/run | share |",
        "|---|---|---|---|",
    ]
    for name, op, us in p.by_node[:top]:
        lines.append(f"| {name} | {op} | {us / 1e3:.2f} | {us / total:.1%} |")
    return "\n".join(lines) + "\n"


def _bad_arguments(args) -> str | None:
    """The first flag or path that cannot work, as a message with its fix; None when all can."""
    for m in args.models:
        if not os.path.isfile(m):
            return f"model {m!r} does not exist; pass the path of an exported .onnx file"
    for flag, value, low in (
        ("--runs", args.runs, 1),
        ("--warmup", args.warmup, 0),
        ("--batch", args.batch, 1),
        ("--top", args.top, 1),
    ):
        if value < low:
            return f"{flag} {value} is not allowed: it must be >= {low}"
    if args.threads is not None and args.threads < 1:
        return f"--threads {args.threads} is not allowed: it must be >= 1 (or left out for the physical cores)"
    if args.out:
        from .report import out_prefix_problem

        return out_prefix_problem(Path(args.out))
    return None


def main(argv: list[str] | None = None, prog: str = "bench-unet lab profile") -> int:
    """Command line: profile one or more models and print (or write) the Markdown summary."""
    from unet_runtime.helpformat import DefaultsHelpFormatter

    ap = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    ap.add_argument("models", nargs="+", help="ONNX files to profile (CPU provider)")
    ap.add_argument("--runs", type=int, default=5, help="profiled runs after warm-up")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up runs, not profiled")
    ap.add_argument("--batch", type=int, default=1, help="batch for a dynamic batch dim")
    ap.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: physical cores)"
    )
    ap.add_argument("--top", type=int, default=15, help="slowest nodes to list")
    ap.add_argument(
        "--out",
        help="also write PREFIX.md (machine, command, tables) and PREFIX.json (every figure)",
    )
    args = ap.parse_args(argv)
    problem = _bad_arguments(args)
    if problem:
        print(f"{ap.prog}: error: {problem}", file=sys.stderr)
        return 1
    from .report import header_lines, run_meta, write_text_atomic

    meta = run_meta(prog, argv)
    parts, profiles = [], {}
    for m in args.models:
        p = profile_model(
            m, runs=args.runs, warmup=args.warmup, batch=args.batch, threads=args.threads
        )
        profiles[os.path.basename(m)] = asdict(p)
        parts.append(to_markdown(p, os.path.basename(m), args.top))
        print(parts[-1], flush=True)
    if args.out:
        # PREFIX.md (a .md --out is the prefix's Markdown) and PREFIX.json with every figure.
        out = Path(args.out)
        header = "\n".join(header_lines("bench-unet lab profile", meta)) + "\n"
        write_text_atomic(
            out.with_suffix(".json"), json.dumps({**meta, "profiles": profiles}, indent=1) + "\n"
        )
        write_text_atomic(out.with_suffix(".md"), header + "\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
