"""``bench-unet tiles``: a large image segmented at native resolution in windows: speed and memory.

Runs ``Segmenter.iter_tiles`` on a seeded image (4096x4096 by default) with
an exported model, windows of the model's size, and records windows per
second, milliseconds per megapixel, the stitcher's band memory and the peak
resident memory of the process (sampled), with the machine.

``--monai`` adds the peer users know: MONAI's ``sliding_window_inference``
(PyTorch) on the same image and weights, the PyTorch twin of the model
(``unet_bench.peers.torch_from_onnx``, so a plain fp32 export is needed),
the same window, overlap and blending, scores stitched and then argmax'd.
Its row records the same figures and the mask agreement with ours.

    bench-unet tiles --model int8-argmax.onnx --out benchmarks/results/tiles-cpu [--image-size 4096 4096]
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from unet_runtime.providers import parse_providers
from unet_runtime.tiling import BLENDS, Tiling

from .report import (
    begin_run,
    header_lines,
    model_problem,
    results_parser,
    save_results,
)

__all__ = ["main"]


class _PeakRss:
    """The process's resident memory before the block and its peak during it (MiB; sampled by the
    export's own step meter, every 5 ms)."""

    def __enter__(self):
        from unet_export.resources import StepMeter, current_rss_mb

        self.before = current_rss_mb() or 0.0
        self._meter = StepMeter()
        self._meter.start()
        return self

    def __exit__(self, *exc):
        self.peak = self._meter.stop().peak_rss_mb or 0.0


def monai_row(model: Path, image: np.ndarray, *, tile, overlap: float, blend: str, mean, std):
    """MONAI's sliding window on the PyTorch twin: ``(row, mask, margin)`` (margin: top-2 probability gap).

    fp32 on the CPU, channels_last, ``sw_batch_size=1`` as ours on a CPU.
    ``gaussian`` and ``constant`` are MONAI's modes of the same names; a
    ``deepest`` run (an argmax model) is compared with MONAI's gaussian.
    """
    import onnx
    import torch
    from monai.inferers import sliding_window_inference

    from unet_runtime import images as im

    from .peers import torch_from_onnx

    net = torch_from_onnx(onnx.load(str(model)), "fp32", channels_last=True, device="cpu")
    mode = blend if blend in ("gaussian", "constant") else "gaussian"
    h, w = image.shape[:2]
    with _PeakRss() as rss, torch.inference_mode():
        x = torch.from_numpy(im.to_model_input([image], mean, std, "nchw"))
        x = x.contiguous(memory_format=torch.channels_last)
        calls = []

        def predictor(t):
            calls.append(len(t))  # MONAI's own window grid, counted rather than assumed
            return net(t, "softmax")

        t0 = time.perf_counter()
        probs = sliding_window_inference(x, tuple(tile), 1, predictor, overlap=overlap, mode=mode)
        seconds = time.perf_counter() - t0
        top2 = torch.topk(probs[0], 2, dim=0).values
        mask = probs[0].argmax(0).to(torch.uint8).numpy()
        margin = (top2[0] - top2[1]).numpy()
        output_mb = probs.element_size() * probs.nelement() / 2**20
        del probs, x
    import monai

    row = {
        "engine": f"MONAI {monai.__version__} sliding_window_inference, torch {torch.__version__}",
        "precision": "fp32",
        "blend": mode,
        "windows": sum(calls),
        "seconds": round(seconds, 2),
        "windows_per_s": sum(calls) / seconds,
        "ms_per_megapixel": seconds * 1e3 / (h * w / 1e6),
        "accumulator_mb": output_mb,
        "rss_before_mb": round(rss.before, 1),
        "peak_rss_mb": round(rss.peak, 1),
    }
    return row, mask, margin


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
    p.add_argument(
        "--monai",
        action="store_true",
        help="also MONAI's sliding_window_inference on the PyTorch twin (needs torch and monai, "
        "and a plain fp32 export)",
    )
    args = p.parse_args(argv)
    from unet_runtime import Segmenter

    problem = model_problem(args.model)
    if not problem and args.monai:
        missing = [m for m in ("torch", "monai") if importlib.util.find_spec(m) is None]
        if missing:
            problem = (
                f"--monai needs {' and '.join(missing)}: pip install torch monai (optional peers)"
            )
    meta = begin_run(prog, argv, args.out, problem)
    if meta is None:
        return 1
    providers = parse_providers(args.providers)
    h, w = args.image_size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8) if args.monai else None
    from .weights import materialize

    scratch = tempfile.TemporaryDirectory(prefix="bench-tiles-")
    model = materialize(args.model, scratch.name)  # a weight-free copy gets seeded weights
    with Segmenter(model, providers=providers) as seg:
        tile = tuple(args.tile) if args.tile else "model"
        tiling = Tiling(tile, args.overlap, args.blend, args.tile_batch)
        # warm-up: sessions, arenas
        seg.predict(image[:1024, :1024], tile=tiling)
        stats: dict = {}
        rows = 0
        with _PeakRss() as rss:
            t0 = time.perf_counter()
            for band in seg.iter_tiles(image, tile=tiling, stats=stats):
                if mask is not None:
                    mask[band.top : band.top + len(band.mask)] = band.mask
                rows += len(band.mask)
            seconds = time.perf_counter() - t0
        window = tuple(args.tile) if args.tile else tuple(seg.info.size or ())
        mean, std = seg.info.mean, seg.info.std
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
            "rss_before_mb": round(rss.before, 1),
            "peak_rss_mb": round(rss.peak, 1),
            "rows": rows,
        }
    peer_line = []
    if args.monai:
        from unet_export.verify import FP32_TIE_MARGIN

        peer, peer_mask, margin = monai_row(
            model,
            image,
            tile=window,
            overlap=args.overlap,
            blend=args.blend,
            mean=mean,
            std=std,
        )
        # Agreement where MONAI's top two probabilities differ by the export's fp32 tie margin:
        # elsewhere the class is a coin toss that summation order decides.
        confident = margin >= FP32_TIE_MARGIN
        peer["agreement_all"] = float(np.mean(peer_mask == mask))
        peer["confident_pixels"] = int(confident.sum())
        peer["agreement_confident"] = (
            float(np.mean(peer_mask[confident] == mask[confident])) if confident.any() else None
        )
        info["monai"] = peer
        agree = (
            f"{peer['agreement_confident']:.4%} of {peer['confident_pixels']} confident px"
            if peer["agreement_confident"] is not None
            else "no confident px"
        )
        peer_line = [
            f"| {peer['engine']} ({peer['precision']}, same weights) | {h}x{w} | {list(window)}, "
            f"{args.overlap}, {peer['blend']} | {peer['windows']} | {peer['seconds']:.1f} | "
            f"{peer['windows_per_s']:.2f} | {peer['ms_per_megapixel']:.0f} | "
            f"{peer['accumulator_mb']:.1f} (the whole image's scores) | "
            f"{peer['rss_before_mb']:.0f} / {peer['peak_rss_mb']:.0f} |",
            "",
            f"MONAI's mask vs ours: {peer['agreement_all']:.4%} of all pixels, {agree}.",
        ]
    table = "\n".join(
        [
            *header_lines("bench-unet tiles", meta),
            "Segmenter.iter_tiles on a seeded image; peak RSS of the whole process (the image itself included), sampled "
            "every 5 ms; band = what the stitcher holds.",
            "",
            "| model | image | tile, overlap, blend | windows | seconds | windows/s | ms per megapixel | band MB | "
            "RSS before / peak MB |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {info['model']} ({info['precision']} {info['head']}) | {h}x{w} | {info['tile']}, {args.overlap}, {args.blend} | "
            f"{info['windows']} | {info['seconds']:.1f} | {info['windows_per_s']:.2f} | {info['ms_per_megapixel']:.0f} | "
            f"{info['accumulator_mb']:.1f} | {info['rss_before_mb']:.0f} / {info['peak_rss_mb']:.0f} |",
            *peer_line,
            "",
        ]
    )
    save_results(args.out, {**meta, **info}, table)
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
