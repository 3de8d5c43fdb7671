"""``bench-unet frames``: host-to-host time per camera frame, with the resizes on the host or in the graph.

For each frame size, three ways to turn a frame into a mask at its size, on
the same weights: the runtime's host path with its numpy resize, the host
path with OpenCV's (when installed), and a model exported with
``--resize-in-graph`` (the frame goes in as it is). Each row times
``Segmenter.predict(frame)`` (uint8 frame in, uint8 mask out), the model
alone on its prepared input, and the runtime's own pre/post-processing
(``predict`` with the model's output cached), and gives the mask agreement
with the numpy host path.

    bench-unet frames --out benchmarks/results/frames-cpu --precision int8 --frame-size 1920x1080 640x480
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from unet_runtime.providers import parse_providers

from .exporting import run_export
from .report import begin_run, frame_size, header_lines, results_parser, save_results
from .timing import summarize, time_calls

__all__ = ["main", "frame_rows"]


def _export(out: Path, args, resize: bool) -> None:
    flags = ["--input-size", args.size, args.size, "--precision", args.precision]
    flags += ["--head", "argmax", "--input-dtype", "uint8", "--seed", args.seed]
    if resize:
        flags.append("--resize-in-graph")
    if args.weights:
        flags += ["--weights", args.weights]
    run_export(out, *flags)


def frame_rows(
    plain: Path, graph: Path, frames: list, *, providers: str, warmup: int, iters: int
) -> list[dict]:
    """The three rows per frame (see the module doc)."""
    from unet_runtime import Segmenter
    from unet_runtime import images as im

    ways = [
        ("host resize, numpy", plain, "numpy"),
        ("host resize, OpenCV", plain, "opencv"),
        ("resize in graph", graph, None),
    ]
    rows = []
    for frame in frames:
        reference = None
        for name, path, backend in ways:
            try:
                im.set_resize_backend(backend or "auto")
            except ValueError:  # OpenCV not installed: that row is left out
                continue
            with Segmenter(path, providers=providers) as seg:
                batch = seg.engine.prepare([seg.engine.pipeline.prepare(frame)[0]])
                call = seg.engine.bind(batch)
                device = time_calls(call.run, warmup=warmup, iters=iters)
                host = time_calls(
                    lambda frame=frame: seg.predict(frame), warmup=warmup, iters=iters
                )
                cached = seg.engine.run(batch)
                pre_post = time_calls(
                    lambda frame=frame, cached=cached: seg.engine.pipeline.predict(
                        frame, lambda _x: cached
                    ),
                    warmup=1,
                    iters=iters,
                )
                mask = seg.predict(frame)
                reference = mask if reference is None else reference
                rows.append(
                    {
                        "way": name,
                        "frame": f"{frame.shape[1]}x{frame.shape[0]}",
                        "providers": seg.providers,
                        "model_input": list(batch.shape),
                        "host": summarize(host, 1),
                        "device": summarize(device, 1),
                        "pre_post_ms": float(np.median(pre_post)) * 1e3,
                        "mask_agreement_vs_numpy_host": float((mask == reference).mean()),
                        "raw_host_s": host,
                        "raw_device_s": device,
                    }
                )
            im.set_resize_backend("auto")
    return rows


def main(argv: list[str] | None = None, prog: str = "bench-unet frames") -> int:
    """Command line; returns the exit code."""
    from unet_runtime.model_info import PRECISIONS

    argv = list(sys.argv[1:] if argv is None else argv)
    p = results_parser(prog, __doc__)
    p.add_argument(
        "--frame-size",
        type=frame_size,
        nargs="+",
        default=[(1080, 1920)],
        metavar="WxH",
        help="frame sizes, width x height",
    )
    p.add_argument("--size", type=int, default=512, help="the network's size (square)")
    p.add_argument("--precision", choices=PRECISIONS, default="int8", help="exported precision")
    p.add_argument("--providers", default="cpu", help="'auto' or a comma list (cuda,cpu)")
    p.add_argument(
        "--weights", help="trained weights for both exports (default: seeded random init)"
    )
    p.add_argument(
        "--models-from",
        type=Path,
        help="a folder holding plain.onnx and graph.onnx, weight-free or not (skips the exports)",
    )
    p.add_argument("--iters", type=int, default=20, help="timed runs per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per row")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the frames")
    args = p.parse_args(argv)
    meta = begin_run(prog, argv, args.out)
    if meta is None:
        return 1
    providers = parse_providers(args.providers)
    rng = np.random.default_rng(args.seed)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in args.frame_size]
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as tmp:
        folder = args.models_from or Path(tmp)
        if not args.models_from:
            _export(folder / "plain.onnx", args, resize=False)
            _export(folder / "graph.onnx", args, resize=True)
        from .weights import materialize

        # Weight-free copies (gpu-suite --prepare) get seeded weights: the same for both models.
        rows = frame_rows(
            materialize(folder / "plain.onnx", tmp, seed=args.seed),
            materialize(folder / "graph.onnx", tmp, seed=args.seed),
            frames,
            providers=providers,
            warmup=args.warmup,
            iters=args.iters,
        )
    lines = [
        *header_lines("bench-unet frames", meta),
        f"{args.precision} argmax model, {args.size}x{args.size} network, uint8 input; host = "
        "Segmenter.predict(frame): frame in, mask at its size out; model = the session alone on its prepared "
        "input; pre/post = the runtime's own processing (predict with the model output cached). Medians.",
        "",
        "| frame | way | model input | host ms | model ms | pre/post ms | pre/post share of model | "
        "mask agreement vs numpy host |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['frame']} | {r['way']} | {'x'.join(map(str, r['model_input']))} | "
            f"{r['host']['median_ms']:.2f} | {r['device']['median_ms']:.2f} | {r['pre_post_ms']:.2f} | "
            f"{r['pre_post_ms'] / r['device']['median_ms']:.2%} | {r['mask_agreement_vs_numpy_host']:.4%} |"
        )
    save_results(args.out, {**meta, "rows": rows}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
