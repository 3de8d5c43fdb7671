"""``bench-unet lab micro``: the runtime's host-side steps alone (resizes, normalization, argmax), one by one.

Times what ``Segmenter.predict`` does around the model on the host, step by
step, for each backend the host has: the frame resized to the network
(numpy, OpenCV), normalization and layout (``to_model_input``: float32 NHWC
and NCHW, uint8), the mask resized back (nearest), probabilities resized
back (bilinear, numpy and OpenCV) and the argmax of a probability map.

    bench-unet lab micro --out benchmarks/results/micro-cpu [--frame-size 1920x1080] [--size 512]
"""

from __future__ import annotations

import sys
import timeit

import numpy as np

from .report import begin_run, frame_size, header_lines, results_parser, save_results

__all__ = ["main", "steps"]


def steps(frame_hw: tuple[int, int], size: int, classes: int = 21) -> dict:
    """{name: callable} of the host steps for one frame of ``frame_hw`` and a ``size`` x ``size`` network."""
    from unet_runtime import images as im

    rng = np.random.default_rng(0)
    h, w = frame_hw
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    net = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = rng.integers(0, classes, (size, size), dtype=np.uint8)
    probs = rng.random((size, size, classes), dtype=np.float32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out: dict = {}
    for backend in ("numpy", "opencv"):
        try:
            im.set_resize_backend(backend)
        except ValueError:  # no OpenCV here
            continue
        out[f"frame {w}x{h} -> {size}x{size} bilinear ({backend})"] = (
            backend,
            lambda: im.resize_image(frame, size, size),
        )
        out[f"probabilities {size}x{size}x{classes} -> {w}x{h} bilinear ({backend})"] = (
            backend,
            lambda: im.resize_bilinear(probs, h, w),
        )
    im.set_resize_backend("auto")
    out[f"mask {size}x{size} -> {w}x{h} nearest"] = (None, lambda: im.resize_nearest(mask, h, w))
    out[f"to_model_input float32 NHWC, batch 1, {size}x{size}"] = (
        None,
        lambda: im.to_model_input([net], mean, std, "nhwc"),
    )
    out[f"to_model_input float32 NCHW, batch 1, {size}x{size}"] = (
        None,
        lambda: im.to_model_input([net], mean, std, "nchw"),
    )
    out[f"to_model_input uint8 NHWC, batch 1, {size}x{size}"] = (
        None,
        lambda: im.to_model_input([net], mean, std, "nhwc", dtype=np.uint8),
    )
    out[f"argmax of {size}x{size}x{classes} probabilities"] = (
        None,
        lambda: probs.argmax(-1).astype(np.uint8),
    )
    return out


def main(argv: list[str] | None = None, prog: str = "bench-unet lab micro") -> int:
    """Command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = results_parser(prog, __doc__)
    p.add_argument(
        "--frame-size", type=frame_size, default="1920x1080", metavar="WxH", help="frame size"
    )
    p.add_argument("--size", type=int, default=512, help="the network's size")
    p.add_argument("--repeat", type=int, default=30, help="timed calls per step (median reported)")
    args = p.parse_args(argv)
    from unet_runtime import images as im

    h, w = args.frame_size
    meta = begin_run(prog, argv, args.out)
    if meta is None:
        return 1
    rows = []
    for name, (backend, fn) in steps((h, w), args.size).items():
        if backend:
            im.set_resize_backend(backend)
        fn()  # warm-up: first-touch of the output buffers, OpenCV's thread pool
        times = timeit.repeat(fn, number=1, repeat=args.repeat)
        im.set_resize_backend("auto")
        rows.append(
            {
                "step": name,
                "median_ms": float(np.median(times)) * 1e3,
                "min_ms": float(np.min(times)) * 1e3,
                "raw_s": times,
            }
        )
    lines = [
        *header_lines("bench-unet lab micro", meta),
        f"Each step alone, {args.repeat} calls, one thread of numpy (OpenCV uses its own pool).",
        "",
        "| step | median ms | min ms |",
        "|---|---|---|",
    ]
    lines += [f"| {r['step']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} |" for r in rows]
    save_results(args.out, {**meta, "rows": rows}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
