"""``bench-unet tiles``: a large image segmented at native resolution in windows: speed and memory.

Runs ``Segmenter.iter_tiles`` on a seeded image (4096x4096 by default) with
an exported model, windows of the model's size, and records windows per
second, milliseconds per megapixel, the stitcher's band memory and the peak
resident memory of the process (sampled), with the machine.

    bench-unet tiles --model int8-argmax.onnx --out benchmarks/results/tiles-cpu [--image-size 4096 4096]
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

from unet_runtime.providers import parse_providers
from unet_runtime.tiling import BLENDS

from .report import (
    begin_run,
    header_lines,
    model_problem,
    results_parser,
    save_results,
)

__all__ = ["main"]


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None, prog: str = "bench-unet tiles") -> int:
    """Command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = results_parser(prog, __doc__)
    p.add_argument("--model", type=Path, required=True, help="the .onnx model")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=[4096, 4096],
        metavar=("H", "W"),
        help="image size",
    )
    p.add_argument(
        "--tile", type=int, nargs=2, metavar=("H", "W"), help="window size (default: the model's)"
    )
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap")
    p.add_argument("--blend", default="gaussian", choices=BLENDS, help="stitching")
    p.add_argument(
        "--tile-batch", type=int, help="windows per session call (default: the runtime's)"
    )
    p.add_argument("--providers", default="cpu", help="'auto' or a comma list (cuda,cpu)")
    args = p.parse_args(argv)
    from unet_runtime import Segmenter

    meta = begin_run(prog, argv, args.out, model_problem(args.model))
    if meta is None:
        return 1
    providers = parse_providers(args.providers)
    h, w = args.image_size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    peak, stop = [_rss_mb()], threading.Event()

    def sample():
        while not stop.wait(0.01):
            peak[0] = max(peak[0], _rss_mb())

    with Segmenter(args.model, providers=providers) as seg:
        tile = tuple(args.tile) if args.tile else "model"
        seg.predict(
            image[:1024, :1024], tile=tile, overlap=args.overlap, blend=args.blend
        )  # warm-up: sessions, arenas
        stats: dict = {}
        rss_before = _rss_mb()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        rows = 0
        for band in seg.iter_tiles(
            image,
            tile=tile,
            overlap=args.overlap,
            blend=args.blend,
            tile_batch=args.tile_batch,
            stats=stats,
        ):
            rows += len(band.mask)
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
        info = {
            "model": args.model.name,
            "head": seg.info.head,
            "precision": seg.info.precision,
            "providers": seg.providers,
            "model_size": list(seg.info.size or ()),
            "image": [h, w],
            "tile": list(tile) if isinstance(tile, tuple) else tile,
            "overlap": args.overlap,
            "blend": args.blend,
            "windows": stats["windows"],
            "seconds": round(seconds, 2),
            "windows_per_s": stats["windows"] / seconds,
            "ms_per_megapixel": seconds * 1e3 / (h * w / 1e6),
            "accumulator_mb": stats["accumulator_bytes"] / 2**20,
            "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak[0], 1),
            "rows": rows,
        }
    table = "\n".join(
        [
            *header_lines("bench-unet tiles", meta),
            "Segmenter.iter_tiles on a seeded image; peak RSS of the whole process (the image itself included), sampled "
            "every 10 ms; band = what the stitcher holds.",
            "",
            "| model | image | tile, overlap, blend | windows | seconds | windows/s | ms per megapixel | band MB | "
            "RSS before / peak MB |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {info['model']} ({info['precision']} {info['head']}) | {h}x{w} | {info['tile']}, {args.overlap}, {args.blend} | "
            f"{info['windows']} | {info['seconds']:.1f} | {info['windows_per_s']:.2f} | {info['ms_per_megapixel']:.0f} | "
            f"{info['accumulator_mb']:.1f} | {info['rss_before_mb']:.0f} / {info['peak_rss_mb']:.0f} |",
            "",
        ]
    )
    save_results(args.out, {**meta, **info}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
