"""``bench-unet lab int8``: INT8 accuracy against the number of calibration images, and the error the gates bound.

The fp32 graph is built once (the export's own steps, with its INT8 decoder
fold), then quantized once per calibration count (synthetic shape images, as
``export-unet --precision int8`` calibrates by default). Each INT8 model is
scored against the fp32 graph on three sets of images:

* labelled images of the shapes fixture (``unet_bench.fixture``): logits
  relative L2, class-mask agreement on confident pixels, and mean IoU of the
  INT8 and fp32 masks against the labels;
* synthetic held-out images (what the export's held-out gates use);
* uniform noise (what the export's batch-1/2 cases use).

These figures set the export's INT8 bounds and its default calibration count.

    bench-unet lab int8 --out benchmarks/results/int8-calibration-trained --weights fixture/weights.weights.h5
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from .report import begin_run, header_lines, results_parser, save_results

__all__ = ["sweep", "main"]


def _fp32_graph(size: int, weights: str | None, seed: int):
    """The export's fp32 graph as INT8 quantizes it (logits head, phase_nhwc fold), and the Keras model."""
    from unet_export import ExportConfig
    from unet_export.pipeline import STEPS, ExportState

    state = ExportState(
        config=ExportConfig(
            input_size=(size, size), head="logits", precision="int8", weights=weights, seed=seed
        ).resolved()
    )
    for name, step in STEPS:
        if name == "precision":
            return state.proto, state.keras_model
        step(state)
    raise AssertionError("no precision step")


def _score(runner, refs: list[dict], images: list, labels: list | None, num_classes: int) -> dict:
    """INT8 outputs of ``images`` against the fp32 ``refs``: logits rel L2, confident agreement, mIoU vs labels."""
    from unet_export.verify import CONFIDENT_MARGIN
    from unet_runtime.images import softmax
    from unet_runtime.metrics import label_scores, top2_margin

    sq_diff = sq_ref = 0.0
    same = n_conf = 0
    masks = []
    for image, ref in zip(images, refs, strict=True):
        out = runner.run([image])
        sq_diff += float(np.square(out["logits"].astype(np.float64) - ref["logits"]).sum())
        sq_ref += float(np.square(ref["logits"].astype(np.float64)).sum())
        conf = top2_margin(softmax(ref["logits"].astype(np.float32))) >= CONFIDENT_MARGIN
        same += int((out["mask"] == ref["mask"])[conf].sum())
        n_conf += int(conf.sum())
        masks.append(out["mask"][0])
    res = {
        "logits_rel_l2": float(np.sqrt(sq_diff / sq_ref)),
        "confident_pixels": n_conf,
        "confident_agreement": same / n_conf if n_conf else None,
    }
    if labels is not None:
        res["int8"] = label_scores(labels, masks, num_classes)
        res["fp32"] = label_scores(labels, [r["mask"][0] for r in refs], num_classes)
    return res


def sweep(
    counts: list[int],
    *,
    size: int,
    weights: str | None,
    seed: int,
    labelled: int,
    held_out: int,
    log=print,
) -> dict:
    """Quantize at each calibration count and score each model (see module doc); returns the rows."""
    from unet_bench.fixture import shapes_sample
    from unet_export.calibration import synthetic_images
    from unet_export.precision import to_int8
    from unet_export.verify import Runner, make_pixels
    from unet_runtime.images import to_model_input

    fp32_model, keras_model = _fp32_graph(size, weights, seed)
    num_classes = int(keras_model.output_shape[-1])
    kwargs = dict(
        head="logits",
        layout="nhwc",
        input_dtype="float32",
        mean=(0, 0, 0),
        std=(1, 1, 1),
        num_classes=num_classes,
    )
    rng = np.random.default_rng(seed + 777)
    sets = {
        "labelled fixture images": [shapes_sample(rng, size, num_classes) for _ in range(labelled)],
        "synthetic held-out images": [
            (im, None) for im in synthetic_images(held_out, size, size, seed=seed + 2000)
        ],
        "uniform noise": [(make_pixels(size, size, seed + i), None) for i in range(2)],
    }
    fp32 = Runner(fp32_model, **kwargs)
    refs = {name: [fp32.run([im]) for im, _ in pairs] for name, pairs in sets.items()}
    del fp32
    rows = []
    for count in counts:
        t0 = time.perf_counter()
        calib = synthetic_images(count, size, size, seed=seed + 1000)
        int8 = to_int8(
            fp32_model, (to_model_input([im], (0, 0, 0), (1, 1, 1), "nhwc") for im in calib)
        )
        seconds = time.perf_counter() - t0
        runner = Runner(int8, **kwargs)
        row = {"calibration_images": count, "quantize_s": round(seconds, 1)}
        for name, pairs in sets.items():
            labels = [lab for _, lab in pairs] if pairs[0][1] is not None else None
            row[name] = _score(runner, refs[name], [im for im, _ in pairs], labels, num_classes)
        rows.append(row)
        log(json.dumps(row))
    return {"size": size, "weights": weights or f"untrained (seed {seed})", "rows": rows}


def to_markdown(result: dict, meta: dict) -> str:
    """One table per image set: a row per calibration count."""

    lines = [
        *header_lines("bench-unet lab int8", meta),
        f"{result['size']}x{result['size']}, weights: {result['weights']}. INT8 (QDQ U8S8, per-channel, minmax, "
        "phase_nhwc fold) against the fp32 graph it was quantized from; calibration on synthetic shape images.",
        "",
    ]
    for name in ("labelled fixture images", "synthetic held-out images", "uniform noise"):
        labelled = name == "labelled fixture images"
        lines += [
            f"## {name}",
            "",
            "| calibration images | quantize s | logits rel L2 | confident agreement (px) |"
            + (" mIoU int8 | mIoU fp32 |" if labelled else ""),
            "|---|---|---|---|" + ("---|---|" if labelled else ""),
        ]
        for row in result["rows"]:
            r = row[name]
            agree = (
                ""
                if r["confident_agreement"] is None
                else f"{r['confident_agreement']:.4%} ({r['confident_pixels']:,})"
            )
            extra = (
                f" {r['int8']['mean_iou']:.4f} | {r['fp32']['mean_iou']:.4f} |" if labelled else ""
            )
            lines.append(
                f"| {row['calibration_images']} | {row['quantize_s']:.1f} | {r['logits_rel_l2']:.4f} | "
                f"{agree} |{extra}"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "bench-unet lab int8") -> int:
    """Command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = results_parser(prog, __doc__)
    p.add_argument("--weights", help="trained weights (bench-unet lab fixture); default: untrained")
    p.add_argument(
        "--counts", type=int, nargs="+", default=[8, 16, 24, 32], help="calibration image counts"
    )
    p.add_argument("--size", type=int, default=512, help="image size (square)")
    p.add_argument("--labelled", type=int, default=8, help="labelled fixture images scored")
    p.add_argument("--held-out", type=int, default=8, help="synthetic held-out images scored")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and of every image set")
    args = p.parse_args(argv)
    meta = begin_run(prog, argv, args.out)
    if meta is None:
        return 1
    result = sweep(
        args.counts,
        size=args.size,
        weights=args.weights,
        seed=args.seed,
        labelled=args.labelled,
        held_out=args.held_out,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    save_results(args.out, {**meta, **result}, to_markdown(result, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
