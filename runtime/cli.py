"""``segment-unet``: segment PNG/JPEG images with an exported model.

Writes one palette PNG per image (Pascal VOC colours; pixel values are the
class ids) and, with ``--overlay``, a blended preview; with
``--probabilities``, the class probabilities as a NumPy ``.npy`` file;
``--info MODEL`` describes a model file. A folder stands for the image
files in it. An unreadable image is skipped with a message and the exit
code is 1 at the end; two inputs that would write the same mask file, or a
mask that cannot be written, stop the run with an error. Masks are written
atomically. Needs Pillow (the 'images' extra).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

from . import __version__
from .atomic import atomic_write_bytes
from .errors import SegmenterError
from .helpformat import DefaultsHelpFormatter
from .tiling import BLENDS, Tiling

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="segment-unet",
        formatter_class=DefaultsHelpFormatter,
        description="Segment images with a VGG19-UNet ONNX model exported by export-unet.",
        epilog="segment-unet serve MODEL ...: serve the model over the Open Inference Protocol (segment-unet serve --help)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("model", type=Path, help="the .onnx model")
    p.add_argument(
        "images",
        nargs="*",
        type=Path,
        help=f"image files, or folders (their {'/'.join(IMAGE_SUFFIXES)} files, not recursive)",
    )
    p.add_argument(
        "--out", type=Path, help="folder for the masks (created if missing); required with images"
    )
    p.add_argument(
        "--info",
        action="store_true",
        help="print what the model file holds (input, output, head, precision, classes, normalization, "
        "weights, export versions) and exit; no images needed",
    )
    p.add_argument(
        "--overlay",
        action="store_true",
        help="also write NAME.overlay.png: colours blended over the image",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write NAME.probs.npy: float32 (H, W, classes) class probabilities from the same run "
        "(H x W x classes x 4 bytes: 22 MB for a 512x512 image with 21 classes; np.load reads it); "
        "not for --head argmax models",
    )
    p.add_argument("--providers", default="auto", help="'auto' or a comma list: tensorrt,cuda,cpu")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail instead of warning when a requested provider does not run",
    )
    p.add_argument("--batch", type=int, default=1, help="images per session call (without --tile)")
    t = p.add_argument_group(
        "tiling (native resolution, for models trained on crops at native resolution)"
    )
    t.add_argument(
        "--tile",
        nargs="?",
        const="model",
        metavar="HxW|model",
        help="segment each image in overlapping windows of HxW pixels (multiples of 16; 'model': the "
        "model's own size), stitched at the image's resolution, the mask PNG written band by band",
    )
    t.add_argument(
        "--overlap",
        type=float,
        default=0.25,
        help="--tile: fraction of a window its neighbours overlap",
    )
    t.add_argument(
        "--blend",
        choices=BLENDS,
        default="gaussian",
        help="--tile: weights that blend the windows' scores, or deepest: each pixel from the window it "
        "lies deepest in (argmax models always)",
    )
    t.add_argument(
        "--tile-batch",
        type=int,
        help="--tile: windows per session call (default: 8 on a GPU, 1 on the CPU)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    return p


#: What a folder argument contributes (case-insensitive); files named explicitly may have any suffix.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class _UsageError(Exception):
    """Bad arguments found before any image is segmented."""


def _outputs(path: Path, overlay: bool = False, probabilities: bool = False) -> list[str]:
    """The file names an input image is written as: its mask, then its overlay and probabilities if asked."""
    return (
        [f"{path.stem}.png"]
        + ([f"{path.stem}.overlay.png"] if overlay else [])
        + ([f"{path.stem}.probs.npy"] if probabilities else [])
    )


def _collect(paths: list[Path], overlay: bool = False, probabilities: bool = False) -> list[Path]:
    """Expand folders, drop repeats of one file, refuse two inputs that would write the same file name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise _UsageError(
                    f"folder {str(path)!r} holds no {'/'.join(IMAGE_SUFFIXES)} files; "
                    "pass image files or a folder of them"
                )
            files.extend(found)
        else:
            # a missing or unreadable file is skipped later, with the others still done
            files.append(path)
    writer: dict[str, Path] = {}  # output file name -> the input that writes it
    seen: set[Path] = set()
    unique: list[Path] = []
    for path in files:
        real = path.resolve()
        if real in seen:
            continue  # the same file named twice: segmented once
        seen.add(real)
        for name in _outputs(path, overlay, probabilities):
            if name in writer:
                raise _UsageError(
                    f"{str(writer[name])!r} and {str(path)!r} would both be written as {name}; "
                    "rename one, or segment them into separate --out folders"
                )
            writer[name] = path
        unique.append(path)
    return unique


def _save_png(image, path: Path) -> None:
    """Encode in memory, then write-and-rename: an interrupted run leaves no half-written mask."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _save_npy(array, path: Path) -> None:
    """np.save in memory, then write-and-rename, as for the masks."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _progress(done: int, total: int, quiet: bool, unit: str = "") -> None:
    if quiet or not total:
        return
    width = 30
    filled = width * done // total
    print(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}{unit}",
        end="" if done < total else "\n",
        file=sys.stderr,
        flush=True,
    )


def _tile_arg(text: str | None):
    """--tile's value: None, 'model', or (H, W) from 'HxW'."""
    if text is None or text == "model":
        return text
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        return h, w
    except ValueError:
        raise _UsageError(f"--tile {text!r} is not HxW (e.g. 512x512) or 'model'") from None


def _segment_tiled(segmenter, path: Path, image, args, palette) -> None:
    """One image through tiled inference: the mask PNG (and .probs.npy) written band by band as windows finish."""
    import numpy as np
    from PIL import Image

    from . import images as im
    from ._png import PalettePngWriter
    from .atomic import temp_path

    mask_path = args.out / _outputs(path, False, False)[0]
    h, w = image.shape[:2]
    full = np.empty((h, w), np.uint8) if args.overlay else None
    probs = None
    # a memory-mapped .npy filled band by band, renamed into place when whole
    if args.probabilities:
        probs_path = args.out / _outputs(path, False, True)[1]
        tmp_probs = temp_path(probs_path)
        probs = np.lib.format.open_memmap(
            tmp_probs, mode="w+", dtype=np.float32, shape=(h, w, segmenter.info.num_classes)
        )
    try:
        with PalettePngWriter(mask_path, w, h, np.asarray(palette, np.uint8)) as png:
            tiling = Tiling(args.tile, args.overlap, args.blend, args.tile_batch)
            for band in segmenter.iter_tiles(
                image,
                tile=tiling,
                probabilities=args.probabilities,
                progress=lambda d, t: _progress(d, t, args.quiet, " windows"),
            ):
                png.write(band.mask)
                rows = slice(band.top, band.top + len(band.mask))
                if full is not None:
                    full[rows] = band.mask
                if probs is not None:
                    probs[rows] = band.probs
        if probs is not None:
            probs.flush()
            del probs
            os.replace(tmp_probs, probs_path)
            probs = None
    finally:
        if probs is not None:
            del probs
            Path(tmp_probs).unlink(missing_ok=True)
    if full is not None:
        _save_png(
            Image.fromarray(im.overlay(image, full)), args.out / _outputs(path, True, False)[1]
        )


def _shape(dims) -> str:
    """An ONNX Runtime shape as a reader writes it: symbolic dimensions (the batch) as N, H, W."""
    names = iter(("N", "H", "W"))
    return "(" + ", ".join(str(d) if isinstance(d, int) else next(names, "?") for d in dims) + ")"


def describe(segmenter) -> str:
    """A few lines saying what a model file holds, as ``segment-unet --info`` prints them."""
    import json

    info, session = segmenter.info, segmenter.engine.session
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    if info.resize_in_graph:
        size = f"frames of any size, resized to {info.height}x{info.width} in the graph"
    else:
        size = (
            f"{info.height}x{info.width}"
            if info.fixed_size
            else f"any size (multiples of {info.size_multiple})"
        )
    normalize = "inside the graph" if "uint8" in inp.type else "by the runtime"
    names = ", ".join(info.class_names[:8]) + (", ..." if len(info.class_names) > 8 else "")
    lines = [
        f"{segmenter.model_path} ({segmenter.model_path.stat().st_size / 1e6:.1f} MB)",
        f"  input      {inp.name}: {inp.type[7:-1]} {_shape(inp.shape)} {info.layout.upper()}, {size}",
        f"  output     {out.name}: {out.type[7:-1]} {_shape(out.shape)}, {info.head} head",
        f"  precision  {info.precision}",
        f"  normalize  (pixel/255 - mean) / std, mean {' '.join(map(str, info.mean))}, "
        f"std {' '.join(map(str, info.std))}, {normalize}",
        f"  classes    {info.num_classes}: {names}",
    ]
    extra = dict(info.extra)
    if extra:
        weights = extra.pop("weights", "?")
        source = extra.pop("weights_source", None)
        digest = extra.pop("weights_sha256", None)
        lines.append(
            f"  weights    {weights}"
            + (f" ({source})" if source else "")
            + (f", sha256 {digest[:16]}..." if digest else "")
        )
        if "calibration" in extra:  # int8 exports
            lines.append(f"  calibrated {extra.pop('calibration')}")
        try:
            versions = json.loads(extra.pop("versions", "{}"))
            lines.append("  exported   with " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        except json.JSONDecodeError:
            pass
        lines += [f"  {key:<10} {value}" for key, value in sorted(extra.items())]
    else:
        lines.append(
            "  (no export-unet metadata: layout, head and classes were inferred from the graph)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segment-unet``; returns the exit code. ``segment-unet serve ...`` runs the model server."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from .serve import main as serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.info:
        return _info(args.model)
    if not args.images or args.out is None:
        parser.error("the following arguments are required: images, --out (or --info MODEL alone)")
    try:
        segmenter, paths = _open(args)
    except _UsageError as exc:
        print(f"segment-unet: error: {exc}", file=sys.stderr)
        return 1
    palette = _palette()
    start = time.perf_counter()
    with segmenter:
        if args.tile is not None:
            return _run_tiled(segmenter, paths, args, palette, start)
        return _run_batched(segmenter, paths, args, palette, start)


def _info(model: Path) -> int:
    from .segmenter import Segmenter

    try:
        with Segmenter(model, providers="cpu") as segmenter:
            print(describe(segmenter))
    except SegmenterError as exc:
        print(f"segment-unet: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _palette() -> list[int]:
    from . import images as im

    return im.voc_palette().flatten().tolist()


def _open(args):
    """The Segmenter and the input files, once every flag is known to fit the model; else _UsageError.

    The --out folder is created only then, so a refused run leaves no empty folder.
    """
    if args.batch < 1:
        raise _UsageError(f"--batch {args.batch} must be >= 1")
    import importlib.util

    if importlib.util.find_spec("PIL") is None:
        raise _UsageError("Pillow is not installed; pip install pillow (the 'images' extra)")
    from .providers import parse_providers
    from .segmenter import Segmenter

    paths = _collect(args.images, args.overlay, args.probabilities)
    args.tile = _tile_arg(args.tile)
    try:
        segmenter = Segmenter(
            args.model, providers=parse_providers(args.providers), strict=args.strict
        )
    except SegmenterError as exc:
        raise _UsageError(str(exc)) from exc
    problem = _flags_problem(args, segmenter)
    if problem is None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = f"cannot create --out folder {str(args.out)!r} ({exc.strerror or exc}); choose another --out"
    if problem is not None:
        segmenter.close()
        raise _UsageError(problem)
    return segmenter, paths


def _flags_problem(args, segmenter) -> str | None:
    """What in the flags this model cannot do (checked once, before any image), or None."""
    if args.tile is not None:
        from .tiling import check_spec

        try:
            check_spec(
                args.tile,
                args.overlap,
                args.blend,
                args.tile_batch or 1,
                segmenter.info.size,
                segmenter.info.size_multiple,
            )
        except SegmenterError as exc:
            tile = "x".join(map(str, args.tile)) if isinstance(args.tile, tuple) else args.tile
            return f"--tile {tile}: {exc}"
    if args.probabilities and segmenter.info.head == "argmax":
        return (
            f"--probabilities: {str(args.model)!r} was exported with --head argmax and outputs masks only; "
            "re-export it with --head softmax (or logits), or drop --probabilities"
        )
    return None


def _load(path: Path):
    """The image at ``path`` as RGB uint8, or None after saying why it was skipped."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        print(f"\nsegment-unet: skipped {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _run_batched(segmenter, paths: list[Path], args, palette, start: float) -> int:
    """segment-unet without --tile: images in batches of --batch, each image's files written."""
    failures, total = 0, len(paths)
    for first in range(0, total, args.batch):
        loaded = [(p, _load(p)) for p in paths[first : first + args.batch]]
        chunk = [(p, a) for p, a in loaded if a is not None]
        failures += len(loaded) - len(chunk)
        arrays = [a for _, a in chunk]
        if arrays:
            try:
                if args.probabilities:  # one run gives both
                    masks, probs = map(
                        list, zip(*segmenter.predict_with_proba(arrays), strict=True)
                    )
                else:
                    masks, probs = segmenter.predict(arrays), [None] * len(arrays)
            except SegmenterError as exc:
                failures += len(arrays)
                names = ", ".join(str(p) for p, _ in chunk)
                print(f"\nsegment-unet: skipped {names}: {exc}", file=sys.stderr)
                masks, probs, chunk = [], [], []
            for (path, image), mask, prob in zip(chunk, masks, probs, strict=True):
                failed = _write_outputs(path, image, mask, prob, args, palette)
                if failed is not None:
                    print(
                        f"\nsegment-unet: error: cannot write {failed}; "
                        "free disk space or choose another --out",
                        file=sys.stderr,
                    )
                    return 1
        _progress(min(total, first + args.batch), total, args.quiet)
    if not args.quiet:
        elapsed, ok = time.perf_counter() - start, total - failures
        print(
            f"segmented {ok}/{total} images on {', '.join(segmenter.providers)} in {elapsed:.2f} s "
            f"({elapsed / max(ok, 1) * 1000:.0f} ms/image); masks in {args.out}",
            file=sys.stderr,
        )
    return 1 if failures else 0


def _write_outputs(path: Path, image, mask, prob, args, palette) -> str | None:
    """An image's mask PNG (and overlay, probabilities); returns what could not be written, or None.

    Disk full or permissions: every later image would fail the same way, so the caller stops.
    """
    from PIL import Image

    from . import images as im

    out = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    out.putpalette(palette)
    names = iter(_outputs(path, args.overlay, args.probabilities))
    target = args.out / next(names)
    try:
        _save_png(out, target)
        if args.overlay:
            target = args.out / next(names)
            _save_png(Image.fromarray(im.overlay(image, mask)), target)
        if args.probabilities:
            target = args.out / next(names)
            _save_npy(prob, target)
    except OSError as exc:
        return f"{str(target)!r} ({exc.strerror or exc})"
    return None


def _run_tiled(segmenter, paths: list[Path], args, palette, start: float) -> int:
    """segment-unet --tile: each image tiled, its files written as its windows finish."""

    failures = 0
    for path in paths:
        image = _load(path)
        if image is None:
            failures += 1
            continue
        try:
            _segment_tiled(segmenter, path, image, args, palette)
        except SegmenterError as exc:
            failures += 1
            print(f"\nsegment-unet: skipped {path}: {exc}", file=sys.stderr)
        except OSError as exc:
            print(
                f"\nsegment-unet: error: cannot write the outputs of {str(path)!r} ({exc.strerror or exc}); "
                "free disk space or choose another --out",
                file=sys.stderr,
            )
            return 1
    if not args.quiet:
        elapsed = time.perf_counter() - start
        print(
            f"segmented {len(paths) - failures}/{len(paths)} images (tiled) on {', '.join(segmenter.providers)} in "
            f"{elapsed:.2f} s; masks in {args.out}",
            file=sys.stderr,
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
