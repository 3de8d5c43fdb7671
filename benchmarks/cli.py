"""``bench-unet``: ONNX Runtime vs the Keras original (and PyTorch), one matrix, one process.

Rows: Keras ``model.predict`` and ``tf.function`` (when TensorFlow is
installed), ONNX Runtime per provider x precision x head x batch x size, and
optionally PyTorch. Results: PREFIX.json (every raw timing), PREFIX.md, and
PREFIX.png with ``--plot``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["main", "build_parser"]

PROVIDERS = ("cpu", "cuda", "tensorrt")


class BenchError(Exception):
    """A bad flag value or an impossible request; printed as one line, exit 1."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    # numpy and onnx only (fold.py imports no TensorFlow): the GPU machine has no TensorFlow.
    from unet_export.fold import FOLD_CHOICES
    from unet_runtime import __version__
    from unet_runtime._help import DefaultsHelpFormatter

    p = argparse.ArgumentParser(prog="bench-unet", formatter_class=DefaultsHelpFormatter,
                                description=__doc__.split("\n\n")[0],
                                epilog="Other benchmarks: " + "; ".join(f"bench-unet {name} --help: {what}"
                                                                         for name, (_, what) in SUBCOMMANDS.items()))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--out", type=Path, required=True, help="output prefix: writes PREFIX.json and PREFIX.md")
    p.add_argument("--size", type=int, nargs="+", default=[512], help="square image sizes (multiples of 16)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes")
    p.add_argument("--providers", nargs="+", default=["cpu"], choices=PROVIDERS, help="ONNX Runtime providers")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "fp16", "int8"), help="exported precisions")
    p.add_argument("--head", nargs="+", default=["softmax"], choices=("softmax", "logits", "argmax"), help="exported heads")
    p.add_argument("--input-dtype", nargs="+", default=["float32"], choices=("float32", "uint8"),
                   help="exported input types: float32 (host normalizes) and/or uint8 (normalized in the graph)")
    # nhwc, as export-unet: an image is HWC, so a uint8 NHWC model needs no host-side transpose
    # (benchmarks/results/h100-pad-layout-prediction-2026-11-25.md).
    p.add_argument("--layout", default="nhwc", choices=("nhwc", "nchw"), help="exported input layout")
    p.add_argument("--cuda-variants", nargs="+", default=["default"],
                   choices=("default", "plain", "graph", "exact"),
                   help="CUDA option sets: default (prefer_nhwc, fuse_conv_bias for non-exact), plain (ORT defaults), "
                        "graph (+ CUDA graph), exact (fp32 without TF32)")
    p.add_argument("--keras", choices=("auto", "on", "off"), default="auto", help="Keras rows (auto: when TensorFlow is installed)")
    p.add_argument("--torch", action="store_true",
                   help="add PyTorch channels_last peer rows with the same weights (needs torch): fp16 on the GPU when "
                        "--providers has cuda or tensorrt, else fp32 on the CPU")
    p.add_argument("--torch-compile", action="store_true", help="also a torch.compile(max-autotune) row (minutes to compile)")
    p.add_argument("--weights", help="trained weights for the export (default: seeded random init)")
    p.add_argument("--fold-upsample", nargs="+", default=["auto"], choices=FOLD_CHOICES,
                   help="decoder fold forms passed to export-unet (auto: phase_nhwc for int8, convtranspose for fp16, "
                        "off for fp32; rows name the form)")
    p.add_argument("--pad-channels", nargs="+", default=["off"], choices=("off", "on"),
                   help="export-unet --pad-channels (conv1-1 input and argmax head to multiples of 8) off and/or on; "
                        "int8 rows are never padded")
    p.add_argument("--calibration-images", help="int8 rows: calibration folder passed to export-unet (default: synthetic shapes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init")
    p.add_argument("--models-from", type=Path, help="use pre-exported models PRECISION-HEAD-SIZE.onnx from this folder "
                   "(weight-stripped ones are refilled) instead of exporting")
    p.add_argument("--save-models", type=Path, help="also save the exported models here, weight-stripped (for carrying)")
    p.add_argument("--images", type=Path, help="folder of PNG/JPEG images to time and check on (default: seeded noise)")
    p.add_argument("--iters", type=int, default=30, help="timed runs per row (after warm-up)")
    p.add_argument("--keras-iters", type=int, help="timed runs of the Keras rows (default: --iters)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs per row")
    p.add_argument("--plot", action="store_true", help="write PREFIX.png (latency distributions; needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _validate(args) -> None:
    for s in args.size:
        if s < 16 or s % 16:
            raise BenchError(f"--size {s} is not allowed: sizes must be positive multiples of 16 (e.g. {max(16, s // 16 * 16)})")
    if any(b < 1 for b in args.batch):
        raise BenchError(f"--batch {args.batch}: every batch size must be >= 1")
    if args.iters < 1 or args.warmup < 0:
        raise BenchError(f"--iters {args.iters} must be >= 1 and --warmup {args.warmup} >= 0")
    if args.models_from and not args.models_from.is_dir():
        raise BenchError(f"--models-from {str(args.models_from)!r} is not a folder")
    from .report import out_prefix_problem

    problem = out_prefix_problem(args.out)
    if problem:
        raise BenchError(problem)


class _Bar:
    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.quiet = total, 0, quiet

    def tick(self):
        self.done += 1
        if not self.quiet:
            w = 30
            f = min(w, w * self.done // max(1, self.total))
            print(f"\r[{'#' * f}{'.' * (w - f)}] {self.done}/{self.total} timed runs", end="", file=sys.stderr, flush=True)

    def line(self, text):
        if not self.quiet:
            print(f"\r{text:<80}", file=sys.stderr, flush=True)


def _model_name(precision, head, size, input_dtype="float32", fold="off", pad="off"):
    return (f"{precision}-{head}-{size}{'-u8' if input_dtype == 'uint8' else ''}{'' if fold == 'off' else '-fold_' + fold}"
            f"{'-pad8' if pad == 'on' else ''}.onnx")


def _row_keys(args):
    """(precision, head, input dtype, fold, pad) of every ONNX Runtime row, in order, once each.

    ``auto`` is resolved to the fold export-unet applies for the precision,
    so that a row and its model file name say which graph ran; int8 is never padded.
    """
    from unet_export.fold import auto_fold_form

    keys = [(p, h, d, auto_fold_form(p) if f == "auto" else f, pad) for p in args.precision for h in args.head
            for d in args.input_dtype for f in args.fold_upsample for pad in args.pad_channels
            if not (p == "int8" and pad == "on")]
    return list(dict.fromkeys(keys))


def _get_models(args, tmp: Path, exports: dict) -> tuple[dict, Callable[[int], object] | None]:
    """{(precision, head, size, input dtype, fold, pad): path} and a Keras model factory (size -> model, or None).

    Export reports go to ``exports``.
    """
    import onnx

    from unet_bench.weights import is_stripped, refill, strip

    models = {}
    # The rows' models, plus the fp32 softmax model: the numeric reference.
    want = {("fp32", "softmax", s, "float32", "off", "off") for s in args.size}
    want |= {(p, h, s, d, f, pad) for (p, h, d, f, pad) in _row_keys(args) for s in args.size}
    if args.models_from:
        for key in sorted(want):
            precision, _, _, _, fold, pad = key
            src = args.models_from / _model_name(*key)
            # A fold or padding of an fp32/fp16 model is derived here from the plain one, after refilling,
            # so all rows carry the same weights (int8 graphs are folded before calibration).
            derive = not src.is_file() and precision != "int8" and (fold != "off" or pad == "on")
            plain = args.models_from / _model_name(*key[:4])
            source = plain if derive else src
            if not source.is_file():
                raise BenchError(f"--models-from: {str(source)!r} is missing; export it (bench-unet --save-models) first")
            m = onnx.load(str(source))
            if is_stripped(m):
                m = refill(m, seed=args.seed)
            if derive and fold != "off":
                from unet_export.fold import fold_upsample_convs

                m, _ = fold_upsample_convs(m, fold)
            if derive and pad == "on":
                from unet_export.pad import pad_channels

                m, _ = pad_channels(m)
            dst = tmp / src.name
            onnx.save(m, str(dst))
            models[key] = dst
        return models, None
    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise BenchError(f"exporting needs {' and '.join(missing)} (pip install 'unet-onnx[export]'), or pass --models-from")
    for key in sorted(want):
        out = tmp / _model_name(*key)
        exports[out.name] = _export_subprocess(args, key, out)
        models[key] = out
        if args.save_models:
            args.save_models.mkdir(parents=True, exist_ok=True)
            onnx.save(strip(onnx.load(str(out))), str(args.save_models / out.name))
    if args.keras == "off":
        return models, None
    from .peers import keras_model

    return models, functools.partial(keras_model, seed=args.seed, weights=args.weights)


def _export_subprocess(args, key, out: Path) -> dict:
    """Run export-unet in a child process; return the key figures of its report.

    A child, not a call: TensorFlow's graphs and INT8 calibration's
    activations would otherwise stay in this process (ANCHORS: ~8 GB per
    export) and the timed rows would run under memory pressure on a 24 GB
    machine.
    """
    import json
    import subprocess

    precision, head, size, input_dtype, fold, pad = key
    cmd = [sys.executable, "-m", "unet_export.cli", "--out", str(out), "--report", str(out.with_suffix(".json")),
           "--input-size", str(size), str(size), "--precision", precision, "--head", head, "--layout", args.layout,
           "--input-dtype", input_dtype, "--fold-upsample", fold, "--seed", str(args.seed), "-q"]
    if pad == "on":
        cmd.append("--pad-channels")
    if args.weights:
        cmd += ["--weights", args.weights]
    if precision == "int8" and args.calibration_images:
        cmd += ["--calibration-images", args.calibration_images]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise BenchError(f"exporting {out.name} failed: {last}")
    rep = json.loads(out.with_suffix(".json").read_text())
    return {k: rep.get(k) for k in ("verification", "calibration", "ops", "steps", "fold_upsample",
                                    "pad_channels")}


#: ``bench-unet NAME ...``: module (in this package) whose ``main(argv, prog)`` runs it. Without a name,
#: bench-unet runs the latency matrix.
SUBCOMMANDS = {
    "export": ("export_cost", "wall time and peak memory of export-unet per configuration"),
    "int8": ("int8_sweep", "INT8 accuracy against the number of calibration images"),
    "serve": ("serve_load", "latency and throughput of segment-unet serve under concurrent clients"),
    "frames": ("frames", "host-to-host time per camera frame: resizes on the host (numpy, OpenCV) or in the graph"),
    "tiles": ("tiles", "a large image at native resolution in windows: windows/s, ms per megapixel, memory"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bench-unet``; returns the exit code."""
    import importlib
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(f"{__package__}.{SUBCOMMANDS[argv[0]][0]}")
        return module.main(argv[1:], prog=f"bench-unet {argv[0]}")
    args = build_parser().parse_args(argv)
    try:
        _validate(args)
        return _run(args, argv)
    except BenchError as exc:
        print(f"bench-unet: error: {exc}", file=sys.stderr)
        return 1


def _run(args, argv) -> int:
    from . import report

    if args.keras == "on" and importlib.util.find_spec("tensorflow") is None:
        raise BenchError("--keras on needs TensorFlow (pip install 'unet-onnx[export]')")
    if args.keras == "auto" and args.models_from:
        args.keras = "off"
    from .torch_bench import torch_missing

    if (args.torch or args.torch_compile) and torch_missing():
        raise BenchError(torch_missing())
    meta = {
        "command": "bench-unet " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": report.machine_info(),
        "images": str(args.images) if args.images else "seeded uniform noise",
        "exports": {},
    }
    # Rows are written as they finish: a run cut short (a GPU call's time limit) keeps what it measured.
    results = report.Results(args.out, meta)
    try:
        _run_rows(args, results)
        table = results.finish(with_plot=args.plot)
    except OSError as exc:
        results.discard()  # nothing half-written left behind
        raise BenchError(f"cannot write results to {str(args.out)!r}.*: {exc.strerror or exc}; "
                         "free space or choose another --out") from exc
    if not args.quiet:
        print(table, file=sys.stderr)
    return 0


def _run_rows(args, results) -> None:
    """Export or load the models, then time every row, handing each to ``results`` as it finishes."""
    from unet_runtime import images as im

    from .flops import conv_flops
    from .runner import Row, agreement, bench_ort
    from .timing import summarize, time_calls

    n_ort = len(args.providers) * len(_row_keys(args)) * len(args.batch) * len(args.size) * len(args.cuda_variants)
    bar = _Bar(n_ort * args.iters * 2, args.quiet)
    with tempfile.TemporaryDirectory(prefix="bench-unet-") as tmpdir:
        tmp = Path(tmpdir)
        bar.line("exporting / loading models ...")
        models, make_keras = _get_models(args, tmp, results.meta["exports"])
        rng = np.random.default_rng(args.seed)
        import onnx

        for size in args.size:
            if args.images:
                from unet_export.calibration import load_images

                images = load_images(args.images, size, size)[: max(args.batch)]
            else:
                images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(max(args.batch))]
            ref_key = ("fp32", "softmax", size, "float32", "off", "off")
            ref_model = onnx.load(str(models[ref_key]), load_external_data=False)
            flops_1 = conv_flops(ref_model, 1, size, size)
            x1 = im.to_model_input(images[:1], (0, 0, 0), (1, 1, 1), "nhwc")
            keras_model = make_keras(size) if make_keras else None
            if keras_model is not None:
                ref_probs = np.asarray(keras_model(x1, training=False))[0]
                ref_src = "Keras fp32"
            else:
                import onnxruntime as ort

                s = ort.InferenceSession(str(models[ref_key]), providers=["CPUExecutionProvider"])
                # The saved models' layout, not --layout: --models-from may hold either.
                nchw = s.get_inputs()[0].shape[1] == 3
                xin = x1.transpose(0, 3, 1, 2) if nchw else x1
                out = s.run(None, {s.get_inputs()[0].name: np.ascontiguousarray(xin)})[0][0]
                ref_probs = out.transpose(1, 2, 0) if nchw else out
                ref_src = "ONNX Runtime CPU fp32"
            bar.line(f"size {size}: {flops_1 / 1e9:.1f} GFLOP per image; reference: {ref_src}")
            for batch in args.batch:
                flops = flops_1 * batch
                if keras_model is not None:
                    from .peers import keras_rows

                    xb = im.to_model_input(images[:batch], (0, 0, 0), (1, 1, 1), "nhwc")
                    k_iters = args.keras_iters or args.iters
                    for name, fn in keras_rows(keras_model, xb).items():
                        raw = time_calls(fn, warmup=min(args.warmup, 2), iters=k_iters)
                        row = Row(name=name, engine="keras", provider="cpu", precision="fp32", head="softmax",
                                  size=size, batch=batch, raw_device_s=raw, device=summarize(raw, batch, flops),
                                  numerics=agreement(ref_probs, np.asarray(fn())[0] if name != "keras.predict" else fn()[0], "softmax"))
                        results.add(row)
                        bar.line(f"{name} b{batch} {size}px: {row.device['median_ms']:.1f} ms")
                for provider in args.providers:
                    for precision, head, input_dtype, fold, pad in _row_keys(args):
                        variants = args.cuda_variants if provider != "cpu" else ["default"]
                        for variant in variants:
                            if variant == "exact" and precision != "fp32":
                                continue
                            name = (f"ort {provider} {precision} {head}" + (" u8-in" if input_dtype == "uint8" else "")
                                    + ("" if fold == "off" else f" fold={fold}") + (" pad8" if pad == "on" else "")
                                    + (f" [{variant}]" if provider != "cpu" else ""))
                            row = bench_ort(models[(precision, head, size, input_dtype, fold, pad)], provider=provider,
                                            config=_config(variant), head=head, precision=precision, size=size,
                                            batch=batch, images=images, ref_probs=ref_probs, warmup=args.warmup,
                                            iters=args.iters, flops=flops, name=name, progress=bar.tick)
                            row.note = f"numerics vs {ref_src}"
                            results.add(row)
                            bar.line(f"{name} b{batch} {size}px: device {row.device['median_ms']:.2f} ms, "
                                     f"host {row.host['median_ms']:.2f} ms")
            # The PyTorch peer after every ONNX Runtime row of this size: a torch.compile max-autotune
            # takes minutes per batch size, and on a time-limited GPU call it is the row to lose, not
            # the ORT rows of the next batch size (every row is saved as it finishes).
            if args.torch or args.torch_compile:
                from . import torch_bench

                for batch in args.batch:
                    for row in torch_bench.torch_rows(ref_model_path=models[ref_key], images=images[:batch],
                                                      size=size, batch=batch, flops=flops_1 * batch,
                                                      warmup=args.warmup, iters=args.iters, ref_probs=ref_probs,
                                                      compile_too=args.torch_compile, device=_torch_device(args)):
                        results.add(row)
                        bar.line(f"{row.name} b{batch} {size}px: {row.device['median_ms']:.2f} ms")


def _torch_device(args) -> str:
    """The PyTorch peer runs where the ONNX Runtime rows run: the GPU when any row uses it."""
    return "cuda" if {"cuda", "tensorrt"} & set(args.providers) else "cpu"


def _config(variant: str):
    from unet_runtime import ProviderConfig

    if variant == "plain":
        return ProviderConfig(prefer_nhwc=False, fuse_conv_bias=False, cudnn_conv_algo_search="HEURISTIC")
    if variant == "graph":
        return ProviderConfig(cuda_graph=True)
    if variant == "exact":
        return ProviderConfig(exact=True)
    return ProviderConfig()


if __name__ == "__main__":
    sys.exit(main())
