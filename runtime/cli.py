"""``segment-unet``: segment PNG/JPEG images with an exported model.

Writes one palette PNG per image (Pascal VOC colours; pixel values are the
class ids) and, with ``--overlay``, a blended preview. An unreadable image
is skipped with a message and the exit code is 1 at the end. Needs Pillow
(``pip install unet-onnx[images]``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from ._help import DefaultsHelpFormatter
from .errors import SegmenterError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="segment-unet",
        formatter_class=DefaultsHelpFormatter,
        description="Segment images with a VGG19-UNet ONNX model exported by export-unet.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("model", type=Path, help="the .onnx model")
    p.add_argument("images", nargs="+", type=Path, help="PNG/JPEG files")
    p.add_argument("--out", type=Path, required=True, help="folder for the masks (created if missing)")
    p.add_argument("--overlay", action="store_true", help="also write NAME.overlay.png: colours blended over the image")
    p.add_argument("--providers", default="auto", help="'auto' or a comma list: tensorrt,cuda,cpu")
    p.add_argument("--strict", action="store_true", help="fail instead of warning when a requested provider does not run")
    p.add_argument("--batch", type=int, default=1, help="images per session call")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    return p


def _progress(done: int, total: int, quiet: bool) -> None:
    if quiet or not total:
        return
    width = 30
    filled = width * done // total
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="" if done < total else "\n",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segment-unet``; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.batch < 1:
        print(f"segment-unet: error: --batch {args.batch} must be >= 1", file=sys.stderr)
        return 1
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        print("segment-unet: error: Pillow is not installed; pip install 'unet-onnx[images]'", file=sys.stderr)
        return 1
    from . import images as im
    from .segmenter import Segmenter

    providers = "auto" if args.providers == "auto" else [p.strip() for p in args.providers.split(",") if p.strip()]
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        segmenter = Segmenter(args.model, providers=providers, strict=args.strict)
    except (SegmenterError, OSError) as exc:
        print(f"segment-unet: error: {exc}", file=sys.stderr)
        return 1

    palette = im.voc_palette().flatten().tolist()
    failures, done, start = 0, 0, time.perf_counter()
    total = len(args.images)
    with segmenter:
        for first in range(0, total, args.batch):
            chunk, arrays = [], []
            for path in args.images[first:first + args.batch]:
                try:
                    with Image.open(path) as img:
                        arrays.append(np.asarray(img.convert("RGB")))
                    chunk.append(path)
                except (OSError, Image.DecompressionBombError, ValueError) as exc:
                    failures += 1
                    print(f"\nsegment-unet: skipped {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            if arrays:
                try:
                    masks = segmenter.predict(arrays)
                except SegmenterError as exc:
                    failures += len(arrays)
                    print(f"\nsegment-unet: skipped {', '.join(map(str, chunk))}: {exc}", file=sys.stderr)
                    masks = []
                for path, image, mask in zip(chunk, arrays, masks):
                    out = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
                    out.putpalette(palette)
                    out.save(args.out / f"{path.stem}.png")
                    if args.overlay:
                        Image.fromarray(im.overlay(image, mask)).save(args.out / f"{path.stem}.overlay.png")
            done = min(total, first + args.batch)
            _progress(done, total, args.quiet)
    elapsed = time.perf_counter() - start
    if not args.quiet:
        ok = total - failures
        print(f"segmented {ok}/{total} images on {', '.join(segmenter.providers)} in {elapsed:.2f} s "
              f"({elapsed / max(ok, 1) * 1000:.0f} ms/image); masks in {args.out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
