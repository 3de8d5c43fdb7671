"""``export-unet``: the reference VGG19-UNet (or your own Keras network) to a verified ONNX file.

Exit codes: 0 written; 1 bad input or a failed check (one line on stderr,
nothing written); 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from unet_runtime.helpformat import DefaultsHelpFormatter

from .errors import ExportError

__all__ = ["main", "build_parser"]


class _Formatter(DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs). Choices and defaults come from their one home."""
    from unet_runtime import (
        __version__,  # the distribution's version (one number for the three packages)
    )
    from unet_runtime.model_info import HEADS, INPUT_DTYPES, LAYOUTS, PRECISIONS

    from .config import ExportConfig
    from .convert import MAX_OPSET, MIN_OPSET
    from .fold import FOLD_CHOICES
    from .precision import CALIBRATION_METHODS, INT8_OPS
    from .triton import ACCELERATORS

    d = ExportConfig()
    p = argparse.ArgumentParser(
        prog="export-unet",
        formatter_class=_Formatter,
        description="Build the reference VGG19-UNet in Keras (or load your weights), convert it with tf2onnx, "
        "clean and check the graph, verify it against Keras on ONNX Runtime (CPU), then write it atomically.",
        epilog="Example: export-unet --out model.onnx --weights my_unet.keras --head argmax --precision fp16",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--out",
        type=Path,
        help="path of the .onnx file to write (missing folders are created once the model is verified); "
        "optional with --triton-repo",
    )
    p.add_argument(
        "--weights",
        help="trained model or weights: .keras, .weights.h5 or legacy .h5 (default: untrained)",
    )
    p.add_argument(
        "--model",
        help="export your own network instead: a saved Keras 3 model (.keras) mapping images (N, H, W, 3) "
        "to per-pixel class scores (N, H, W, C) or a lower resolution; see docs/export.md",
    )
    p.add_argument(
        "--custom-objects",
        metavar="MODULE",
        help="with --model: a Python module to import first, which registers the model's custom layers "
        "(@keras.saving.register_keras_serializable) or holds a custom_objects dict",
    )
    p.add_argument(
        "--encoder-weights",
        help="Keras Applications VGG19 'notop' weights file for the encoder (blockI_convJ -> convI-J)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the random init of layers no weights file sets",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="fixed input height and width, multiples of 16 (default: 512 512, or a --model's own size)",
    )
    size.add_argument(
        "--dynamic-size",
        action="store_true",
        help="size-agnostic model: H and W symbolic (multiples of 16 at run time)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        help="classes of the head (default: the --weights file's, else 21 = Pascal VOC)",
    )
    p.add_argument(
        "--class-names",
        type=Path,
        help="text file, one class name per line (default: the Pascal VOC names for 21 classes, else class_0, class_1, ...)",
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=d.layout,
        help="input layout; softmax/logits outputs use it too (an argmax mask is N,H,W)",
    )
    p.add_argument(
        "--head",
        choices=HEADS,
        default=d.head,
        help="probabilities (as specified), raw logits, or a uint8 class mask computed in the graph",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="arithmetic inside the graph; I/O stays float32 (uint8 for the argmax mask); int8 = static "
        "QDQ quantization for CPUs with VNNI, calibrated and gated on held-out images",
    )
    p.add_argument(
        "--calibration-images",
        type=Path,
        help="int8: folder of >= 8 representative PNG/JPEG images (every 4th is held out for the accuracy "
        "gate); without it, synthetic shape images are used (less accurate)",
    )
    p.add_argument(
        "--calibration-count",
        type=int,
        default=d.calibration_count,
        help="int8: number of synthetic calibration images",
    )
    p.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default=d.calibration_method,
        help="int8: activation range estimation",
    )
    p.add_argument(
        "--int8-float-ops",
        nargs="+",
        metavar="OP",
        choices=INT8_OPS,
        default=[],
        help=f"int8: op types to keep in float (of {', '.join(INT8_OPS)}); e.g. Add for a transformer's "
        "residual stream, when the held-out gate fails",
    )
    p.add_argument(
        "--input-dtype",
        choices=INPUT_DTYPES,
        help="float32: the caller normalizes; uint8: raw RGB pixels in, cast and --mean/--std applied in the graph "
        "(a quarter of the bytes to copy; fastest on GPU) (default: uint8 with --resize-in-graph, else float32)",
    )
    p.add_argument(
        "--resize-in-graph",
        action="store_true",
        help="uint8 frames of any size in: the graph resizes them to --input-size (bilinear, as the runtime "
        "does on the host) and an argmax head's mask back to the frame's size; softmax/logits heads "
        "return scores at --input-size",
    )
    p.add_argument(
        "--fold-upsample",
        choices=FOLD_CHOICES,
        default=d.fold_upsample,
        help="fold each decoder upsampling into the conv after it (same function, 15%% fewer multiply-adds): "
        "phase (2x2 convs + DepthToSpace, integer kernels on CPU), phase_nhwc (same, interleaved in NHWC: "
        "for int8 on CPU, fixed sizes), convtranspose (one op, NHWC on CUDA), "
        "auto = phase_nhwc for int8, convtranspose for fp16, off for fp32 (the fastest measured for each)",
    )
    p.add_argument(
        "--pad-channels",
        action="store_true",
        help="pad conv1-1's 3 input channels and an argmax head's classes to multiples of 8 with zeros "
        "(exact; lets GPU tensor cores take those two layers; not for int8)",
    )
    p.add_argument(
        "--opset", type=int, default=d.opset, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}"
    )
    p.add_argument(
        "--mean",
        nargs=3,
        type=float,
        default=list(d.mean),
        metavar=("R", "G", "B"),
        help="per-channel mean after scaling pixels to [0, 1] (recorded in the model for the runtime)",
    )
    p.add_argument(
        "--std",
        nargs=3,
        type=float,
        default=list(d.std),
        metavar=("R", "G", "B"),
        help="per-channel std after scaling pixels to [0, 1]",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip the comparison with Keras (not recommended)"
    )
    p.add_argument("--report", type=Path, help="write a JSON report of everything measured")
    t = p.add_argument_group("Triton Inference Server repository")
    t.add_argument(
        "--triton-repo",
        type=Path,
        help="also write DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx and ONNX test data",
    )
    t.add_argument(
        "--triton-name", default="vgg19_unet", help="model name (folder) in the repository"
    )
    t.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="Triton max_batch_size; the export is verified at this batch",
    )
    t.add_argument("--instances", type=int, default=1, help="instance_group count")
    t.add_argument(
        "--accelerator",
        choices=ACCELERATORS,
        default="auto",
        help="auto: TensorRT for fp32/fp16 exports (in their precision), CPU instances for int8; "
        "tensorrt: TensorRT with engine and timing caches and a batch 1..max profile; "
        "cuda: CUDA EP (prefer_nhwc, fuse_conv_bias); cpu: CPU instances",
    )
    t.add_argument(
        "--preferred-batch-sizes",
        type=int,
        nargs="+",
        help="dynamic_batching preferred_batch_size (default: none, the batcher forms any size up to "
        "--max-batch-size, as Triton's guide advises for most models)",
    )
    t.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=100,
        help="dynamic_batching max_queue_delay_microseconds",
    )
    t.add_argument(
        "--trt-cache-dir",
        default="/trt_cache",
        help="TensorRT engine and timing cache folder in the container: mount a persistent volume there "
        "(ONNX Runtime creates only the last folder level; an engine takes minutes to build)",
    )
    t.add_argument(
        "--max-image-side",
        type=int,
        help="size-agnostic and --resize-in-graph exports: the largest image height/width of the TensorRT "
        "profile (default: 4096 with --resize-in-graph, else 1024)",
    )
    t.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty repository (replaces only NAME/ there)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="log every pass and verification case"
    )
    return p


def _read_class_names(path: Path) -> tuple[str, ...]:
    try:
        names = [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(
            f"--class-names {str(path)!r} cannot be read ({exc.__class__.__name__}); give a UTF-8 text file, one name per line"
        ) from exc
    if not names:
        raise ExportError(f"--class-names {str(path)!r} is empty; give one class name per line")
    return tuple(names)


def triton_options(args):
    """The TritonOptions the flags ask for, or None without --triton-repo."""
    if args.triton_repo is None:
        return None
    from .triton import TritonOptions

    return TritonOptions(
        repo=args.triton_repo,
        name=args.triton_name,
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        accelerator=args.accelerator,
        preferred_batch_sizes=tuple(args.preferred_batch_sizes or ()),
        max_queue_delay_us=args.max_queue_delay_us,
        trt_cache_dir=args.trt_cache_dir,
        max_image_side=args.max_image_side
        or (4096 if args.resize_in_graph else TritonOptions.max_image_side),
        force=args.force,
    )


#: Imported up front with Ctrl-C held back (see _sigint_deferred); the pipeline imports them lazily otherwise.
NATIVE_MODULES = ("tensorflow", "keras", "onnx", "onnxruntime", "tf2onnx", "onnxslim", "h5py")
#: Those of them only TensorFlow's side of the export needs.
TENSORFLOW_MODULES = ("tensorflow", "keras", "tf2onnx")


@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C until the block ends, then raise KeyboardInterrupt.

    A KeyboardInterrupt raised while a native extension module initializes
    aborts the whole process instead of unwinding (onnx's nanobind module:
    "terminate called after throwing an instance of 'nanobind::python_error'",
    an exit code of -6), so the cleanup
    message and exit code 130 never came.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        # Handlers can only be set from the main thread; and an ignored SIGINT (nohup, a background
        # job) or an application's own handler stays as it is.
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``export-unet``; returns the process exit code."""
    # TensorFlow's C++ logging must be quieted before it is imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.triton_repo is None:
        parser.error("give --out FILE and/or --triton-repo DIR")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    # after parsing: --help and usage errors need none of the export's modules
    from .tfside import IN_PROCESS_ENV, quiet_converter_logs

    quiet_converter_logs()

    from .config import ExportConfig
    from .pipeline import export_model

    def progress(line: str) -> None:
        if not args.quiet or line.startswith("WARNING"):
            print(line, file=sys.stderr, flush=True)

    try:
        config = ExportConfig(
            input_size=tuple(args.input_size) if args.input_size else None,
            model=args.model,
            custom_objects=args.custom_objects,
            dynamic_size=args.dynamic_size,
            num_classes=args.num_classes,
            class_names=_read_class_names(args.class_names) if args.class_names else None,
            layout=args.layout,
            head=args.head,
            precision=args.precision,
            opset=args.opset,
            input_dtype=args.input_dtype
            or ("uint8" if args.resize_in_graph else ExportConfig.input_dtype),
            resize_in_graph=args.resize_in_graph,
            fold_upsample=args.fold_upsample,
            pad_channels=args.pad_channels,
            weights=args.weights,
            encoder_weights=args.encoder_weights,
            seed=args.seed,
            verify=not args.no_verify,
            mean=tuple(args.mean),
            std=tuple(args.std),
            calibration_images=str(args.calibration_images) if args.calibration_images else None,
            calibration_count=args.calibration_count,
            calibration_method=args.calibration_method,
            int8_float_ops=tuple(args.int8_float_ops),
        )
        # export_model also settles num_classes from --weights (and checks it) before the build
        config.validate()
        if not (args.weights or args.encoder_weights or args.model):
            progress(
                f"WARNING: no --weights given: exporting an UNTRAINED model (random init, seed {args.seed}); "
                "its masks are meaningless until you export your trained weights"
            )
        triton = triton_options(args)
        with _sigint_deferred():  # after the quick checks, so that a bad flag still fails at once
            for name in NATIVE_MODULES:
                if name in TENSORFLOW_MODULES and os.environ.get(IN_PROCESS_ENV) != "1":
                    continue  # imported in TensorFlow's own process (tfside.py), which ignores Ctrl-C
                importlib.import_module(name)
        result = export_model(
            config, args.out, report_path=args.report, progress=progress, triton=triton
        )
    except ExportError as exc:
        print(f"export-unet: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("export-unet: interrupted; nothing was written", file=sys.stderr, flush=True)
        return 130
    if not args.quiet:
        where = ", ".join(filter(None, [result.report.get("output"), result.report.get("triton")]))
        print(f"wrote {where} ({result.report['size_bytes'] / 1e6:.1f} MB model)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
