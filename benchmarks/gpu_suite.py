"""``bench-unet gpu-suite``: every GPU figure the docs quote, re-measured by one command on one GPU.

Two halves, because a GPU host often has neither TensorFlow nor a network:

    bench-unet gpu-suite --prepare models/                                  # where TensorFlow is
    bench-unet gpu-suite --models-from models/ --out benchmarks/results/h100-2026-12-07

``--prepare`` exports every model the suite needs, without their weights (a
few MB in all; the runs refill them with seeded values, since speed does
not depend on them). The run then takes each step in turn, each a child
process with its own time limit, so a failure or a time-out costs that step
only, and writes one file per step beside a summary:

1. ``tests``: ``pytest tests/test_gpu.py`` (run from a clone), its whole log;
2. ``matrix``: the fp16 argmax uint8 matrix at batch 1 and 8: the reference
   graph (``--fold-upsample off``) and the default fold, channel padding off
   and on, CUDA graphs, beside PyTorch eager, ``torch.compile`` max-autotune
   and its decoder-fold twin compiled the same way (when torch is there);
   agreement over 8 images;
3. ``frames``: ``bench-unet frames`` at 640x480, 1920x1080 and 3840x2160,
   host resize vs ``--resize-in-graph``, host-to-host time per frame;
4. ``tiles``: ``bench-unet tiles`` on a 4096x4096 image, 8 windows per call;
5. ``kernels``: the fast path's kernels (``bench-unet lab kernels``, CUDA graph);
6. ``tensorrt``: whether ONNX Runtime's TensorRT provider runs here, plainly.

Then ``bench-unet lab index`` when the output lies in the results folder.
``--providers cpu`` with small sizes runs the same steps on any machine (the
test suite does, so the suite cannot break unnoticed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .report import begin_run, frame_size, header_lines, results_parser, save_results

__all__ = ["main", "prepare", "MODELS"]

#: (precision, head, input dtype) of every model the run reads, by bench-unet's file names: the
#: matrix's reference and fp16 argmax uint8 model, and the four tests/test_gpu.py loads.
MODELS = (
    ("fp32", "softmax", "float32"),
    ("fp16", "softmax", "float32"),
    ("fp16", "argmax", "float32"),
    ("fp16", "argmax", "uint8"),
)
FRAMES = ("640x480", "1920x1080", "3840x2160")


@dataclass
class Step:
    """One child process of the suite."""

    name: str
    argv: list[str]
    timeout_s: float
    env: dict | None = None
    #: why the step does not run here (None: it runs)
    skip: str | None = None


def _bench(*args) -> list[str]:
    return [sys.executable, "-m", "unet_bench.cli", *map(str, args)]


def prepare(folder: Path, size: int, seed: int = 0, export=None) -> list[str]:
    """Export the suite's models into ``folder`` without their weights; returns the file names.

    ``export(out, *flags)``: how one export-unet run is made (default: exporting.run_export, a
    child process per model, so TensorFlow's memory goes with each).
    """
    import onnx

    from .cli import Variant
    from .exporting import run_export
    from .weights import strip

    export = export or run_export

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "frames").mkdir(exist_ok=True)
    jobs = []
    for precision, head, dtype in MODELS:
        flags = ["--input-size", size, size, "--precision", precision, "--head", head]
        flags += ["--input-dtype", dtype, "--fold-upsample", "off", "--seed", seed]
        jobs.append((folder / Variant(precision, head, dtype).file_name(size), flags))
    # bench-unet frames' pair: the same network with the host resize, and with it in the graph.
    frames = ["--input-size", size, size, "--precision", "fp16", "--head", "argmax"]
    frames += ["--input-dtype", "uint8", "--seed", seed]
    jobs.append((folder / "frames" / "plain.onnx", frames))
    jobs.append((folder / "frames" / "graph.onnx", [*frames, "--resize-in-graph"]))
    written = []
    for out, flags in jobs:
        # --no-verify: the weights are replaced on the GPU host anyway; the export itself is
        # verified by export-unet's own tests and every user export.
        export(out, *flags, "--no-verify")
        onnx.save(strip(onnx.load(str(out))), str(out))
        written.append(str(out.relative_to(folder)))
    return written


def _steps(args, out: Path) -> list[Step]:
    from .cli import Variant

    gpu = args.providers != "cpu"
    models, size, it = args.models_from, args.size, args.iters
    torch_flags = ["--torch", "--torch-compile", "--torch-fold"] if args.torch else []
    tests = Path("tests/test_gpu.py")
    matrix = ["--models-from", models, "--out", f"{out}-matrix", "--plot", "-q", "--size", size]
    matrix += ["--providers", args.providers, "--precision", "fp16", "--head", "argmax"]
    matrix += ["--input-dtype", "uint8", "--fold-upsample", "off", "auto", "--pad-channels", "off"]
    matrix += [
        "on",
        "--batch",
        *args.batch,
        "--iters",
        it,
        "--warmup",
        args.warmup,
        "--keras",
        "off",
    ]
    matrix += ["--agreement-images", "8", *(["--cuda-variants", "graph"] if gpu else [])]
    frames = ["frames", "--out", f"{out}-frames", "--models-from", models / "frames"]
    frames += ["--precision", "fp16", "--size", size, "--providers", args.providers]
    frames += ["--frame-size", *args.frames, "--iters", it, "--warmup", args.warmup]
    fast = models / Variant("fp16", "argmax", "uint8").file_name(size)
    tiles = ["tiles", "--out", f"{out}-tiles", "--model", fast, "--providers", args.providers]
    tiles += ["--image-size", args.tile_image, args.tile_image, "--tile-batch", "8"]
    kernels = ["lab", "kernels", fast, "--out", f"{out}-kernels", "--providers", args.providers]
    kernels += ["--runs", max(5, it // 2), *(["--cuda-graph"] if gpu else [])]
    tensorrt = [sys.executable, "-m", "unet_bench.gpu_suite", "--try-tensorrt", str(fast)]
    return [
        Step(
            "tests",
            [sys.executable, "-m", "pytest", str(tests), "-v", "-s", "-p", "no:cacheprovider"],
            args.timeout_s["tests"],
            env={"UNET_GPU_MODELS": str(models)},
            skip=None if tests.is_file() else f"{tests} is not here: run the suite from a clone",
        ),
        Step("matrix", _bench(*matrix, *torch_flags), args.timeout_s["matrix"]),
        Step("frames", _bench(*frames), args.timeout_s["frames"]),
        Step("tiles", _bench(*tiles), args.timeout_s["tiles"]),
        Step(
            "kernels",
            _bench(*kernels),
            args.timeout_s["kernels"],
            skip=None if _has("torch") else "needs torch (its profiler reads the kernels)",
        ),
        Step("tensorrt", tensorrt, args.timeout_s["tensorrt"]),
    ]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _run(step: Step, log: Path) -> dict:
    """Run one step with its output in ``log``; returns its status, exit code and wall time."""
    import os

    if step.skip:
        log.write_text(f"not run: {step.skip}\n")
        return {"status": "not run", "why": step.skip, "seconds": 0.0}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(step.argv) + "\n")
        fh.flush()
        try:
            code = subprocess.run(
                step.argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=step.timeout_s,
                env={**os.environ, **(step.env or {})},
            ).returncode
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            code, status = None, f"timed out after {step.timeout_s:.0f} s"
    return {"status": status, "exit_code": code, "seconds": round(time.perf_counter() - t0, 1)}


def try_tensorrt(model: str) -> int:
    """Print plainly whether ONNX Runtime's TensorRT provider runs ``model`` here; exit 0 either way."""
    import tempfile

    import onnxruntime as ort

    from unet_runtime import ProviderError, Segmenter

    from .weights import materialize

    available = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, available providers: {available}")
    if "TensorrtExecutionProvider" not in available:
        print("TensorRT: NOT AVAILABLE (this onnxruntime build has no TensorRT provider)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with Segmenter(materialize(model, tmp), providers=["tensorrt"], strict=True) as seg:
                print(f"TensorRT: RUNS ({seg.providers})")
        except ProviderError as exc:  # listed, but libnvinfer is missing or the build failed
            print(f"TensorRT: NOT AVAILABLE ({exc})")
    return 0


def main(argv: list[str] | None = None, prog: str = "bench-unet gpu-suite") -> int:
    """Command line; returns the exit code (1 if any step failed or timed out)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--try-tensorrt"]:
        return try_tensorrt(argv[1])
    if argv[:1] == ["--prepare"]:
        return _prepare_main(argv[1:], prog)
    p = results_parser(prog, __doc__)
    p.add_argument("--models-from", type=Path, required=True, help="a folder from --prepare")
    p.add_argument("--providers", default="cuda", help="cuda (the suite), or cpu for a dry run")
    p.add_argument("--size", type=int, default=512, help="the network's size (as prepared)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="the matrix's batches")
    p.add_argument("--frames", nargs="+", default=list(FRAMES), help="frame sizes WxH")
    p.add_argument("--tile-image", type=int, default=4096, help="side of the tiled image")
    p.add_argument("--iters", type=int, default=50, help="timed runs per row")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per row")
    p.add_argument(
        "--torch", choices=("auto", "on", "off"), default="auto", help="the PyTorch peers"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=480,
        help="time limit of the whole run, shared by the steps (see their weights in the code)",
    )
    args = p.parse_args(argv)
    problem = None
    if not args.models_from.is_dir():
        problem = f"--models-from {str(args.models_from)!r} is not a folder; make it with --prepare"
    else:
        try:
            for f in args.frames:
                frame_size(f)
        except Exception as exc:  # argparse's type error, as a line
            problem = f"--frames: {exc}"
    if args.torch == "on" and not _has("torch"):
        problem = problem or "--torch on needs torch"
    meta = begin_run(prog, argv, args.out, problem)
    if meta is None:
        return 1
    args.torch = args.torch == "on" or (args.torch == "auto" and _has("torch"))
    # The matrix (with torch.compile) takes most of an 8-minute budget.
    weights = {
        "tests": 0.1,
        "matrix": 0.55,
        "frames": 0.1,
        "tiles": 0.1,
        "kernels": 0.1,
        "tensorrt": 0.05,
    }
    args.timeout_s = {k: max(30.0, w * args.budget_s) for k, w in weights.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    for step in _steps(args, out):
        log = Path(
            f"{out}-{step.name}.txt"
            if step.name in ("tests", "tensorrt")
            else f"{out}-{step.name}.log"
        )
        results[step.name] = {**_run(step, log), "log": log.name, "command": step.argv}
        print(
            f"{step.name}: {results[step.name]['status']} ({results[step.name]['seconds']} s)",
            flush=True,
        )
    tensorrt_line = (out.parent / f"{out.name}-tensorrt.txt").read_text().strip().splitlines()[-1:]
    lines = [
        *header_lines(prog, meta),
        f"Providers {args.providers}, {args.size}x{args.size}, batches {args.batch}, "
        f"{args.iters} timed runs per row; PyTorch peers {'on' if args.torch else 'off (no torch)'}.",
        "",
        "| step | status | seconds | output |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        files = sorted(p.name for p in out.parent.glob(f"{out.name}-{name}.*"))
        links = ", ".join(f"[{f}]({f})" for f in files)
        lines.append(
            f"| {name} | {r['status']}{': ' + r['why'] if r.get('why') else ''} | {r['seconds']} | {links} |"
        )
    lines += ["", f"TensorRT: {tensorrt_line[0] if tensorrt_line else 'unknown'}", ""]
    save_results(out, {**meta, "steps": results}, "\n".join(lines))
    if out.parent.resolve() == (Path.cwd() / "benchmarks" / "results").resolve():
        subprocess.run(
            _bench("lab", "index"), check=False
        )  # the results folder's README lists them
    return 0 if all(r["status"] in ("ok", "not run") for r in results.values()) else 1


def _prepare_main(argv: list[str], prog: str) -> int:
    import argparse

    p = argparse.ArgumentParser(prog=f"{prog} --prepare", description=prepare.__doc__)
    p.add_argument("folder", type=Path)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not _has("tensorflow"):
        print(
            f"{prog}: error: --prepare exports: install the 'export' extra (pip install '.[export]' in a clone)",
            file=sys.stderr,
        )
        return 1
    written = prepare(args.folder, args.size, args.seed)
    size = sum((args.folder / f).stat().st_size for f in written)
    print(f"{len(written)} weight-free models in {args.folder} ({size / 2**20:.1f} MiB): {written}")
    print(json.dumps({"models": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
