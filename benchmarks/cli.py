"""``bench-unet``: ONNX Runtime vs the Keras original (and PyTorch), one matrix, one process.

Rows: Keras ``model.predict`` and ``tf.function`` (when TensorFlow is
installed), ONNX Runtime per provider x precision x head x batch x size, and
optionally PyTorch. Results: PREFIX.json (every raw timing), PREFIX.md, and
PREFIX.png with ``--plot``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["main", "build_parser"]

PROVIDERS = ("cpu", "cuda", "tensorrt")


class BenchError(Exception):
    """A bad flag value or an impossible request; printed as one line, exit 1."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    # numpy and onnx only (config.py and fold.py import no TensorFlow): bench-unet --models-from
    # runs without it.
    from unet_export.config import ExportConfig
    from unet_export.fold import FOLD_CHOICES
    from unet_runtime import __version__
    from unet_runtime.helpformat import DefaultsHelpFormatter
    from unet_runtime.model_info import HEADS, INPUT_DTYPES, LAYOUTS, PRECISIONS

    d = ExportConfig()

    p = argparse.ArgumentParser(
        prog="bench-unet",
        formatter_class=DefaultsHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="Other benchmarks: "
        + "; ".join(f"bench-unet {name} --help: {what}" for name, (_, what) in SUBCOMMANDS.items())
        + ". The tools behind the project's own result files: bench-unet lab --help.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--out", type=Path, required=True, help="output prefix: writes PREFIX.json and PREFIX.md"
    )
    p.add_argument(
        "--size", type=int, nargs="+", default=[512], help="square image sizes (multiples of 16)"
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes")
    p.add_argument(
        "--providers", nargs="+", default=["cpu"], choices=PROVIDERS, help="ONNX Runtime providers"
    )
    p.add_argument(
        "--precision",
        nargs="+",
        default=[d.precision],
        choices=PRECISIONS,
        help="exported precisions",
    )
    p.add_argument("--head", nargs="+", default=[d.head], choices=HEADS, help="exported heads")
    p.add_argument(
        "--input-dtype",
        nargs="+",
        default=[d.input_dtype],
        choices=INPUT_DTYPES,
        help="exported input types: float32 (host normalizes) and/or uint8 (normalized in the graph)",
    )
    # nhwc, as export-unet: an image is HWC, so a uint8 NHWC model needs no host-side transpose.
    p.add_argument("--layout", default=d.layout, choices=LAYOUTS, help="exported input layout")
    p.add_argument(
        "--cuda-variants",
        nargs="+",
        default=["default"],
        choices=("default", "plain", "graph", "exact"),
        help="CUDA option sets: default (prefer_nhwc, fuse_conv_bias for non-exact), plain (ORT defaults), "
        "graph (+ CUDA graph), exact (fp32 without TF32)",
    )
    p.add_argument(
        "--keras",
        choices=("auto", "on", "off"),
        default="auto",
        help="Keras rows (auto: when TensorFlow is installed)",
    )
    p.add_argument(
        "--torch",
        action="store_true",
        help="add PyTorch channels_last peer rows with the same weights (needs torch): fp16 on the GPU when "
        "--providers has cuda or tensorrt, else fp32 on the CPU",
    )
    p.add_argument(
        "--torch-compile",
        action="store_true",
        help="also a torch.compile(max-autotune) row (minutes to compile)",
    )
    p.add_argument(
        "--torch-fold",
        action="store_true",
        help="also the PyTorch twin with the decoder fold (ConvTranspose form): the same exact rewrite "
        "the ONNX export applies, so the rows separate what the graph gives from what the runtime gives",
    )
    p.add_argument("--weights", help="trained weights for the export (default: seeded random init)")
    p.add_argument(
        "--model",
        help="benchmark your own network instead of the reference VGG19-UNet: a saved Keras model "
        "(.keras), exported with export-unet --model and timed against its Keras original",
    )
    p.add_argument(
        "--fold-upsample",
        nargs="+",
        default=["auto"],
        choices=FOLD_CHOICES,
        help="decoder fold forms passed to export-unet (auto: phase_nhwc for int8, convtranspose for fp16, "
        "off for fp32; rows name the form)",
    )
    p.add_argument(
        "--pad-channels",
        nargs="+",
        default=["off"],
        choices=("off", "on"),
        help="export-unet --pad-channels (conv1-1 input and argmax head to multiples of 8) off and/or on; "
        "int8 rows are never padded",
    )
    p.add_argument(
        "--calibration-images",
        help="int8 rows: calibration folder passed to export-unet (default: synthetic shapes)",
    )
    p.add_argument(
        "--int8-float-ops",
        nargs="+",
        metavar="OP",
        default=[],
        help="int8 rows: op types export-unet keeps in float (export-unet --int8-float-ops)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random init")
    p.add_argument(
        "--models-from",
        type=Path,
        help="use pre-exported models PRECISION-HEAD-SIZE.onnx from this folder "
        "instead of exporting (weight-free ones from --save-models get seeded weights)",
    )
    p.add_argument(
        "--save-models",
        type=Path,
        help="also save the exported models here without their weights (a few KB "
        "each), for --models-from on a machine without TensorFlow",
    )
    p.add_argument(
        "--images",
        type=Path,
        help="folder of PNG/JPEG images to time and check on, any number (repeated to "
        "fill the batch; default: seeded noise)",
    )
    p.add_argument(
        "--labels",
        type=Path,
        help="folder of label PNGs with the --images' stems (class ids as grey levels, "
        "palette indices, or VOC colours): every row gets pixel accuracy and mIoU against them",
    )
    p.add_argument(
        "--agreement-images",
        type=int,
        default=8,
        help="images every row's masks are compared over (at least the largest batch)",
    )
    p.add_argument("--iters", type=int, default=30, help="timed runs per row (after warm-up)")
    p.add_argument(
        "--keras-iters", type=int, help="timed runs of the Keras rows (default: --iters)"
    )
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs per row")
    p.add_argument(
        "--plot",
        action="store_true",
        help="write PREFIX.png (latency distributions; needs matplotlib)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _validate(args) -> None:
    if args.model:
        _validate_own_network(args)
    for s in args.size:
        if args.model is None and (s < 16 or s % 16):
            raise BenchError(
                f"--size {s} is not allowed: sizes must be positive multiples of 16 (e.g. {max(16, s // 16 * 16)})"
            )
    if any(b < 1 for b in args.batch):
        raise BenchError(f"--batch {args.batch}: every batch size must be >= 1")
    if args.iters < 1 or args.warmup < 0:
        raise BenchError(f"--iters {args.iters} must be >= 1 and --warmup {args.warmup} >= 0")
    if args.models_from and not args.models_from.is_dir():
        raise BenchError(f"--models-from {str(args.models_from)!r} is not a folder")
    if args.labels and not args.images:
        raise BenchError(
            "--labels needs --images: the labels are matched to the images by file name"
        )
    if args.agreement_images < 1:
        raise BenchError(f"--agreement-images {args.agreement_images} must be >= 1")
    from .report import out_prefix_problem

    problem = out_prefix_problem(args.out)
    if problem:
        raise BenchError(problem)


def _validate_own_network(args) -> None:
    """What goes with --model: its own weights, no PyTorch twin (the twin is the VGG19-UNet)."""
    if not Path(args.model).is_file():
        raise BenchError(f"--model {args.model!r} does not exist; give a saved .keras file")
    for flag, given in (
        ("--weights", args.weights),
        ("--torch", args.torch or args.torch_compile or args.torch_fold),
        ("--models-from", args.models_from),
    ):
        if given:
            raise BenchError(
                f"{flag} applies to the reference VGG19-UNet, not to a --model of your own: drop {flag}"
            )


class _Bar:
    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.quiet = total, 0, quiet

    def tick(self):
        self.done += 1
        if not self.quiet:
            w = 30
            f = min(w, w * self.done // max(1, self.total))
            print(
                f"\r[{'#' * f}{'.' * (w - f)}] {self.done}/{self.total} timed runs",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def line(self, text):
        if not self.quiet:
            print(f"\r{text:<80}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Variant:
    """One exported model of the matrix: what export-unet is asked for, its file name and its rows' label."""

    precision: str
    head: str
    input_dtype: str = "float32"
    fold: str = "off"
    pad: bool = False

    def file_name(self, size: int) -> str:
        """``PRECISION-HEAD-SIZE[-u8][-fold_FORM][-pad8].onnx`` (the --models-from / --save-models names)."""
        return (
            f"{self.precision}-{self.head}-{size}{'-u8' if self.input_dtype == 'uint8' else ''}"
            f"{'' if self.fold == 'off' else '-fold_' + self.fold}{'-pad8' if self.pad else ''}.onnx"
        )

    def label(self, provider: str, cuda_variant: str | None = None) -> str:
        """The row name: ``ort PROVIDER PRECISION HEAD [u8-in] [fold=F] [pad8] [[cuda variant]]``."""
        return (
            f"ort {provider} {self.precision} {self.head}"
            + (" u8-in" if self.input_dtype == "uint8" else "")
            + ("" if self.fold == "off" else f" fold={self.fold}")
            + (" pad8" if self.pad else "")
            + (f" [{cuda_variant}]" if cuda_variant else "")
        )

    @property
    def plain(self) -> "Variant":
        """The same export without fold and padding (what a fold or padding is derived from)."""
        return Variant(self.precision, self.head, self.input_dtype)


#: The numeric reference of every row: the reference graph in fp32 with probabilities out.
REFERENCE = Variant("fp32", "softmax")


def variants(args) -> list[Variant]:
    """Every ONNX Runtime model of the matrix, in order, once each.

    ``auto`` is resolved to the fold export-unet applies for the precision,
    so that a row and its model file name say which graph ran; int8 is never padded.
    """
    from unet_export.fold import auto_fold_form

    out = [
        Variant(p, h, d, auto_fold_form(p) if f == "auto" else f, pad == "on")
        for p in args.precision
        for h in args.head
        for d in args.input_dtype
        for f in args.fold_upsample
        for pad in args.pad_channels
        if not (p == "int8" and pad == "on")
    ]
    return list(dict.fromkeys(out))


def _get_models(args, tmp: Path, exports: dict) -> tuple[dict, Callable[[int], object] | None]:
    """{(variant, size): path} and a Keras model factory (size -> model, or None). Export reports go to ``exports``."""
    import onnx

    from unet_bench.weights import is_stripped, refill, strip

    models = {}
    want = {(REFERENCE, s) for s in args.size} | {(v, s) for v in variants(args) for s in args.size}
    if args.models_from:
        for variant, size in sorted(want, key=lambda k: (k[1], k[0].file_name(k[1]))):
            src = args.models_from / variant.file_name(size)
            # A fold or padding of an fp32/fp16 model is derived here from the plain one, after
            # refilling, so all rows carry the same weights (int8 graphs are folded before
            # calibration).
            derive = (
                not src.is_file()
                and variant.precision != "int8"
                and (variant.fold != "off" or variant.pad)
            )
            source = args.models_from / variant.plain.file_name(size) if derive else src
            if not source.is_file():
                raise BenchError(
                    f"--models-from: {str(source)!r} is missing; export it (bench-unet --save-models) first"
                )
            m = onnx.load(str(source))
            if is_stripped(m):
                m = refill(m, seed=args.seed)
            if derive and variant.fold != "off":
                from unet_export.fold import fold_upsample_convs

                m, _ = fold_upsample_convs(m, variant.fold)
            if derive and variant.pad:
                from unet_export.pad import pad_channels

                m, _ = pad_channels(m)
            dst = tmp / src.name
            onnx.save(m, str(dst))
            models[(variant, size)] = dst
        return models, None
    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise BenchError(
            f"exporting needs {' and '.join(missing)} (install the 'export' extra (pip install '.[export]' in a clone)), or pass --models-from"
        )
    for variant, size in sorted(want, key=lambda k: (k[1], k[0].file_name(k[1]))):
        out = tmp / variant.file_name(size)
        exports[out.name] = _export_subprocess(args, variant, size, out)
        models[(variant, size)] = out
        if args.save_models:
            args.save_models.mkdir(parents=True, exist_ok=True)
            onnx.save(strip(onnx.load(str(out))), str(args.save_models / out.name))
    if args.keras == "off":
        return models, None
    from .peers import keras_model, own_keras_model

    if args.model:
        return models, functools.partial(own_keras_model, args.model)
    return models, functools.partial(keras_model, seed=args.seed, weights=args.weights)


def _export_subprocess(args, variant: Variant, size: int, out: Path) -> dict:
    """Run export-unet in a child process (:mod:`.exporting`); return the key figures of its report."""
    import json

    from .exporting import run_export

    flags = ["--report", out.with_suffix(".json"), "--input-size", size, size]
    flags += ["--precision", variant.precision, "--head", variant.head, "--layout", args.layout]
    flags += ["--input-dtype", variant.input_dtype, "--fold-upsample", variant.fold]
    flags += ["--model", args.model] if args.model else ["--seed", args.seed]
    if variant.pad:
        flags.append("--pad-channels")
    if args.weights:
        flags += ["--weights", args.weights]
    if variant.precision == "int8" and args.calibration_images:
        flags += ["--calibration-images", args.calibration_images]
    if variant.precision == "int8" and args.int8_float_ops:
        flags += ["--int8-float-ops", *args.int8_float_ops]
    run_export(out, *flags, error=BenchError)
    rep = json.loads(out.with_suffix(".json").read_text())
    return {
        k: rep.get(k)
        for k in ("verification", "calibration", "ops", "steps", "fold_upsample", "pad_channels")
    }


def _bench_images(args, size: int, count: int) -> tuple[list, list | None, int]:
    """``count`` images at ``size`` (a folder's, repeated if it has fewer; else seeded noise), their labels,
    and how many of them are distinct (the first ones): agreement is counted over those only."""
    if args.images is None:
        rng = np.random.default_rng(args.seed)
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]
        return images, None, count
    from unet_export.calibration import image_files, load_images

    from .labels import load_labels

    try:
        files = image_files(args.images, minimum=1, flag="--images")
        images = load_images(files, size, size)
        labels = load_labels(args.labels, files, size) if args.labels else None
    except Exception as exc:  # ConfigError / LabelError: one line, named
        raise BenchError(str(exc)) from exc
    reps, n = -(-count // len(images)), max(count, len(images))
    return (images * reps)[:n], (labels * reps)[:n] if labels else None, len(images)


#: ``bench-unet NAME ...``: module (in this package) whose ``main(argv, prog)`` runs it. Without a name,
#: bench-unet runs the latency matrix. These are what a user measures their own models with.
SUBCOMMANDS = {
    "serve": (
        "serve_load",
        "throughput and latency of Triton and segment-unet serve (perf_analyzer or own clients)",
    ),
    "frames": (
        "frames",
        "host-to-host time per camera frame: resizes on the host (numpy, OpenCV) or in the graph",
    ),
    "tiles": (
        "tiles",
        "a large image at native resolution in windows: windows/s, ms per megapixel, memory",
    ),
    "export": ("export_cost", "wall time and peak memory of export-unet per configuration"),
    "gpu-suite": (
        "gpu_suite",
        "every GPU figure of the docs in one run: GPU tests, the fp16 matrix with PyTorch peers, "
        "frames, tiles, kernels, TensorRT",
    ),
}
#: ``bench-unet lab NAME ...``: the tools behind the project's own result files and decisions
#: (docs/performance.md says which file each made).
LAB = {
    "ab": (
        "ab",
        "interleaved A/B timing of ONNX files on the CPU (and Keras, PyTorch, OpenVINO peers)",
    ),
    "int8": ("int8_sweep", "INT8 accuracy against the number of calibration images"),
    "profile": ("profile", "where the CPU time goes: ONNX Runtime's profiler per op type and node"),
    "kernels": ("kernels", "where a GPU run's time goes, kernel by kernel (PyTorch's profiler)"),
    "micro": ("micro", "the runtime's host-side steps alone: resizes, normalization, argmax"),
    "fixture": (
        "fixture",
        "train the labelled shapes fixture (trained weights and labelled images for the benchmarks)",
    ),
    "index": ("index", "regenerate benchmarks/results/README.md from the result files"),
    "mutation": (
        "mutation",
        "mutation-test one runtime module with its unit tests (mutmut 2.5.1): the score and survivors",
    ),
    "networks": (
        "networks",
        "save the example networks of other architectures (MobileNetV2 UNet, DeepLabV3, "
        "SegFormer-like) as .keras files, for bench-unet --model",
    ),
}


def _lab(argv: list[str]) -> int:
    """``bench-unet lab [NAME ...]``: one of the LAB tools, or the list of them."""
    import importlib

    if not argv or argv[0] not in LAB:
        print("usage: bench-unet lab NAME ... (NAME --help for its flags)\n")
        for name, (_, what) in LAB.items():
            print(f"  {name:<8} {what}")
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    module = importlib.import_module(f"{__package__}.{LAB[argv[0]][0]}")
    return module.main(argv[1:], prog=f"bench-unet lab {argv[0]}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bench-unet``; returns the exit code."""
    import importlib
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(f"{__package__}.{SUBCOMMANDS[argv[0]][0]}")
        return module.main(argv[1:], prog=f"bench-unet {argv[0]}")
    if argv[:1] == ["lab"]:
        return _lab(argv[1:])
    if argv and argv[0] in LAB:  # the spelling of earlier releases
        print(
            f"bench-unet: note: 'bench-unet {argv[0]}' is now 'bench-unet lab {argv[0]}'",
            file=sys.stderr,
        )
        return _lab(argv)
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
        raise BenchError(
            "--keras on needs TensorFlow (install the 'export' extra (pip install '.[export]' in a clone))"
        )
    if args.keras == "auto" and args.models_from:
        args.keras = "off"
    from .torch_bench import torch_missing

    if (args.torch or args.torch_compile) and torch_missing():
        raise BenchError(torch_missing())
    meta = report.run_meta(
        "bench-unet",
        argv,
        images=str(args.images) if args.images else "seeded uniform noise",
        exports={},
    )
    if args.model:
        from unet_export.weights import sha256_file

        meta["model"] = {"file": args.model, "sha256": sha256_file(args.model)}
    # Rows are written as they finish: a run cut short (a job's time limit) keeps what it
    # measured.
    results = report.Results(args.out, meta)
    try:
        _run_rows(args, results)
        table = results.finish(with_plot=args.plot)
    except OSError as exc:
        results.discard()  # nothing half-written left behind
        raise BenchError(
            f"cannot write results to {str(args.out)!r}.*: {exc.strerror or exc}; "
            "free space or choose another --out"
        ) from exc
    if not args.quiet:
        print(table, file=sys.stderr)
    return 0


def _reference(args, size: int, images: list, models: dict, make_keras) -> tuple[list, str, object]:
    """Per image, the fp32 probabilities every row is compared with: Keras', or the fp32 ONNX model's on the CPU."""
    from unet_runtime import Segmenter

    keras_model = make_keras(size) if make_keras else None
    if keras_model is not None:
        from unet_runtime.images import to_model_input

        probs = [
            np.asarray(
                keras_model(to_model_input([x], (0, 0, 0), (1, 1, 1), "nhwc"), training=False)
            )[0]
            for x in images
        ]
        return probs, "Keras fp32", keras_model
    with Segmenter(models[(REFERENCE, size)], providers="cpu") as seg:
        return [seg.predict_proba(x) for x in images], "ONNX Runtime CPU fp32", None


def _run_rows(args, results) -> None:
    """Export or load the models, then time every row, handing each to ``results`` as it finishes."""
    import onnx

    from unet_runtime import images as im

    from .flops import conv_flops
    from .runner import Row, agreement, bench_ort
    from .timing import summarize, time_calls

    n_ort = (
        len(args.providers)
        * len(variants(args))
        * len(args.batch)
        * len(args.size)
        * len(args.cuda_variants)
    )
    bar = _Bar(n_ort * args.iters * 2, args.quiet)
    count = max(max(args.batch), args.agreement_images)
    with tempfile.TemporaryDirectory(prefix="bench-unet-") as tmpdir:
        tmp = Path(tmpdir)
        bar.line("exporting / loading models ...")
        models, make_keras = _get_models(args, tmp, results.meta["exports"])
        for size in args.size:
            images, labels, distinct = _bench_images(args, size, count)
            if distinct < len(images):
                results.meta["images_note"] = (
                    f"The --images folder holds {distinct} images: they were repeated to fill "
                    f"batches of {len(images)}; agreement counts each once."
                )
            # The reference (and so every row's agreement) covers distinct images only; the
            # repeats of a small --images folder only fill the batches being timed.
            ref_probs, ref_src, keras_model = _reference(
                args, size, images[:distinct], models, make_keras
            )
            try:
                flops_1: int | None = conv_flops(
                    onnx.load(str(models[(REFERENCE, size)]), load_external_data=False),
                    1,
                    size,
                    size,
                )
            except (
                ValueError
            ):  # ONNX shape inference cannot follow every graph (attention reshapes)
                flops_1 = None
            gflop = f"{flops_1 / 1e9:.1f}" if flops_1 else "unknown"
            bar.line(
                f"size {size}: {gflop} GFLOP per image; reference: {ref_src} on {distinct} images"
                + (f" (repeated to fill {len(images)})" if distinct < len(images) else "")
            )
            for batch in args.batch:
                flops = flops_1 * batch if flops_1 else None
                if keras_model is not None:
                    from .peers import keras_rows

                    xb = im.to_model_input(images[:batch], (0, 0, 0), (1, 1, 1), "nhwc")
                    for name, fn in keras_rows(keras_model, xb).items():
                        raw = time_calls(
                            fn, warmup=min(args.warmup, 2), iters=args.keras_iters or args.iters
                        )
                        row = Row(
                            name=name,
                            engine="keras",
                            provider="cpu",
                            precision="fp32",
                            head="softmax",
                            size=size,
                            batch=batch,
                            raw_device_s=raw,
                            device=summarize(raw, batch, flops),
                            numerics=agreement(
                                ref_probs, [p.argmax(-1) for p in ref_probs], labels
                            ),
                            note="the reference itself" if batch == args.batch[0] else "",
                        )
                        results.add(row)
                        bar.line(f"{name} b{batch} {size}px: {row.device['median_ms']:.1f} ms")
                for provider in args.providers:
                    for variant in variants(args):
                        for cuda_variant in args.cuda_variants if provider != "cpu" else [None]:
                            if cuda_variant == "exact" and variant.precision != "fp32":
                                continue
                            name = variant.label(provider, cuda_variant)
                            row = bench_ort(
                                models[(variant, size)],
                                provider=provider,
                                config=_config(cuda_variant or "default"),
                                head=variant.head,
                                precision=variant.precision,
                                size=size,
                                batch=batch,
                                images=images,
                                ref_probs=ref_probs,
                                labels=labels,
                                warmup=args.warmup,
                                iters=args.iters,
                                flops=flops,
                                name=name,
                                progress=bar.tick,
                            )
                            row.note = f"numerics vs {ref_src}" + (
                                " (FLOPs: the reference graph's)" if variant.fold != "off" else ""
                            )
                            results.add(row)
                            bar.line(
                                f"{name} b{batch} {size}px: device {row.device['median_ms']:.2f} ms, "
                                f"host {row.host['median_ms']:.2f} ms"
                            )
            # The PyTorch peers after every ONNX Runtime row of this size: a torch.compile
            # max-autotune
            # takes minutes per batch size, and on a time-limited run it is the row to lose, not
            # the ORT rows of the next batch size (every row is saved as it finishes).
            if args.torch or args.torch_compile or args.torch_fold:
                from . import torch_bench

                for batch in args.batch:
                    for row in torch_bench.torch_rows(
                        ref_model_path=models[(REFERENCE, size)],
                        images=images,
                        size=size,
                        batch=batch,
                        flops=flops_1 * batch if flops_1 else None,
                        warmup=args.warmup,
                        iters=args.iters,
                        ref_probs=ref_probs,
                        labels=labels,
                        compile_too=args.torch_compile,
                        fold=args.torch_fold,
                        device=_torch_device(args),
                    ):
                        results.add(row)
                        bar.line(f"{row.name} b{batch} {size}px: {row.device['median_ms']:.2f} ms")


def _torch_device(args) -> str:
    """The PyTorch peer runs where the ONNX Runtime rows run: the GPU when any row uses it."""
    return "cuda" if {"cuda", "tensorrt"} & set(args.providers) else "cpu"


def _config(variant: str):
    from unet_runtime import ProviderConfig

    if variant == "plain":
        return ProviderConfig(
            prefer_nhwc=False, fuse_conv_bias=False, cudnn_conv_algo_search="HEURISTIC"
        )
    if variant == "graph":
        return ProviderConfig(cuda_graph=True)
    if variant == "exact":
        return ProviderConfig(exact=True)
    return ProviderConfig()


if __name__ == "__main__":
    sys.exit(main())
