"""Interleaved A/B timing of ONNX models (and optionally Keras) on ONNX Runtime's CPU provider.

`bench-unet` times its rows one after another. On a shared 2-core VM the
machine's speed drifts by 10-20% over minutes (other tenants, clocks), so
two rows timed ten minutes apart can differ by more than the change being
measured. Here every round runs each candidate once, in turn, on the same
input: drift hits all candidates alike, and the per-round ratio to the
first candidate is the figure to read (its median over rounds).

Usage:
    bench-unet lab ab --out PREFIX [--rounds 12] [--keras-weights W.weights.h5] [--openvino] MODEL.onnx...

Writes PREFIX.json (every raw timing, machine, versions, command) and PREFIX.md.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from .report import begin_run, cpu_flags, header_lines, results_parser, save_results


def _session(path: str, threads: int | None):
    import onnxruntime as ort

    from unet_runtime.segmenter import session_options

    return ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])


def _input_for(sess, image: np.ndarray) -> np.ndarray:
    """The shared test image in the model's own input layout and dtype, prepared as the runtime prepares it."""
    from unet_runtime.images import to_model_input

    inp = sess.get_inputs()[0]
    layout = "nchw" if inp.shape[1] == 3 else "nhwc"
    return to_model_input(
        [image], (0, 0, 0), (1, 1, 1), layout, dtype=np.uint8 if "uint8" in inp.type else np.float32
    )


def _torch_calls(model_path: str, image: np.ndarray, compile_too: bool) -> dict:
    """The PyTorch twin (fp32 on the CPU, the ONNX model's weights) as candidates: eager, and compiled."""
    import torch

    from .torch_bench import compile_max_autotune, torch_twin

    net, x, _ = torch_twin(model_path, [image], "cpu")
    nets = {"torch fp32 eager": net}
    if compile_too:
        nets["torch fp32 compile max-autotune"] = compile_max_autotune(net)

    def call(fn):
        with torch.inference_mode():
            return fn(x, "softmax").numpy()

    return {name: (lambda fn=fn: call(fn)) for name, fn in nets.items()}


def _openvino_calls(models: list[str], image: np.ndarray, threads: int | None) -> dict:
    """OpenVINO on the same ONNX files: each fp32 graph in f32 (and bf16 where the CPU has bf16), each QDQ
    graph as INT8 (OpenVINO runs Q/DQ models in integer precision)."""
    import onnx
    import openvino as ov

    core = ov.Core()
    bf16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))
    calls = {}
    for path in models:
        sess = _session(path, threads)
        x = _input_for(sess, image)
        qdq = any(
            n.op_type == "QuantizeLinear"
            for n in onnx.load(path, load_external_data=False).graph.node
        )
        hints = ["int8"] if qdq else ["f32"] + (["bf16"] if bf16 else [])
        for hint in hints:
            config = {"INFERENCE_PRECISION_HINT": "f32" if hint == "int8" else hint}
            if threads:
                config["INFERENCE_NUM_THREADS"] = str(threads)
            compiled = core.compile_model(path, "CPU", config)
            request = compiled.create_infer_request()

            def call(r=request, feed=x):
                r.infer({0: feed})
                return r.get_output_tensor(0).data

            calls[f"openvino {hint} {Path(path).name}"] = call
    return calls


def run(
    models: list[str],
    *,
    rounds: int,
    warmup: int,
    size: int,
    threads: int | None,
    keras_weights: str | None,
    image: np.ndarray | None = None,
    seed: int = 0,
    torch_peer: bool = False,
    torch_compile: bool = False,
    openvino: bool = False,
) -> dict:
    """Time every candidate once per round, in turn, for `rounds` rounds; return raw times and summaries.

    `image` (uint8 RGB, size x size) is the input; without it seeded noise,
    on which a trained model's masks mean little (the agreement column is
    then only a smoke check). `torch_peer` adds the PyTorch twin with
    the first model's weights (and `torch_compile` its compiled form) after
    the ONNX models.
    """
    if image is None:
        image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    calls, masks = {}, {}
    if keras_weights:
        from unet_runtime.images import to_model_input

        from .peers import keras_model

        km = keras_model(size, weights=keras_weights)
        # mean 0 / std 1, as the exports' default
        x = to_model_input([image], (0, 0, 0), (1, 1, 1), "nhwc")
        calls["keras.predict"] = lambda: km.predict(x, verbose=0, batch_size=1)
    for path in models:
        sess = _session(path, threads)
        feed = {sess.get_inputs()[0].name: _input_for(sess, image)}
        calls[path] = lambda s=sess, f=feed: s.run(None, f)[0]
    if torch_peer or torch_compile:
        calls.update(_torch_calls(models[0], image, torch_compile))
    if openvino:
        calls.update(_openvino_calls(models, image, threads))
    for name, fn in calls.items():
        # one untimed run at least: its output is the candidate's mask
        for _ in range(max(warmup, 1)):
            out = np.asarray(fn())
        p = out[0]  # (H, W) mask, (H, W, C) or (C, H, W) scores: the class axis is the short one
        masks[name] = p if p.ndim == 2 else p.argmax(-1 if p.shape[-1] <= p.shape[0] else 0)
    raw = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            raw[name].append(time.perf_counter() - t0)
    first = next(iter(calls))
    rows = []
    for name, times in raw.items():
        t = np.array(times) * 1e3
        # per round: how many times faster than the first candidate
        ratio = np.array(raw[first]) / np.array(times)
        rows.append(
            {
                "name": name,
                "median_ms": float(np.median(t)),
                "min_ms": float(t.min()),
                "p90_ms": float(np.percentile(t, 90)),
                "speedup_vs_first_median": float(np.median(ratio)),
                "speedup_vs_first_min": float(ratio.min()),
                "speedup_vs_first_max": float(ratio.max()),
                "mask_agreement_vs_first": float((masks[name] == masks[first]).mean()),
                "raw_s": times,
            }
        )
    return {"first": first, "rounds": rounds, "size": size, "rows": rows}


def _load_image(path: str, size: int) -> np.ndarray:
    """An RGB uint8 image at size x size: read with Pillow (the `images` extra), resized as the runtime resizes."""
    from PIL import Image

    from unet_runtime.images import resize_image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return resize_image(rgb, size, size)


def to_markdown(result: dict, meta: dict) -> str:
    """One table: median/min/p90 per candidate and the median per-round speed-up over the first."""

    lines = [
        *header_lines("Interleaved A/B", meta),
        f"{result['rounds']} rounds; each round runs every candidate once, in this order, on the same "
        f"{result['size']}x{result['size']} input (batch 1). Speed-up = first candidate's time / this one's, "
        "per round; median (min-max) over rounds. Mask agreement: argmax masks vs the first candidate on that input "
        f"({meta['image']}).",
        "",
        "| candidate | median ms | min ms | p90 ms | speed-up vs first | mask agreement |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {Path(r['name']).name} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['p90_ms']:.0f} | "
            f"{r['speedup_vs_first_median']:.2f}x ({r['speedup_vs_first_min']:.2f}-{r['speedup_vs_first_max']:.2f}) | "
            f"{r['mask_agreement_vs_first']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def _bad_arguments(args) -> str | None:
    """The first flag or path that cannot work, as a message with its fix; None when all can."""
    missing = [m for m in args.models if not Path(m).is_file()]
    if missing:
        return f"model {missing[0]!r} does not exist; pass exported .onnx files"
    for flag, value, low in (
        ("--rounds", args.rounds, 1),
        ("--warmup", args.warmup, 0),
        ("--size", args.size, 16),
    ):
        if value < low:
            return f"{flag} {value} is not allowed: it must be >= {low}"
    if args.size % 16:
        return f"--size {args.size} is not allowed: sizes must be multiples of 16 (e.g. {args.size // 16 * 16})"
    if args.threads is not None and args.threads < 1:
        return f"--threads {args.threads} is not allowed: it must be >= 1 (or left out for the physical cores)"
    if args.image and not Path(args.image).is_file():
        return f"--image {args.image!r} does not exist; pass a PNG or JPEG file, or leave it out for seeded noise"
    from .torch_bench import torch_missing

    if (args.torch or args.torch_compile) and torch_missing():
        return torch_missing()
    if args.openvino and importlib.util.find_spec("openvino") is None:
        return "--openvino needs OpenVINO: install the 'openvino' extra (pip install '.[openvino]' in a clone) (an optional peer, never a dependency)"
    return None


def main(argv: list[str] | None = None, prog: str = "bench-unet lab ab") -> int:
    """Command line; returns the exit code."""
    ap = results_parser(prog, __doc__)
    ap.add_argument(
        "models", nargs="+", help="ONNX files (the first is the baseline unless --keras-weights)"
    )
    ap.add_argument("--rounds", type=int, default=12, help="timed rounds")
    ap.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed runs per candidate first (at least one is made: its output gives the mask)",
    )
    ap.add_argument("--size", type=int, default=512, help="input size for models with dynamic H, W")
    ap.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: physical cores)"
    )
    ap.add_argument(
        "--image", help="input image (PNG/JPEG; resized to --size); default: seeded noise"
    )
    ap.add_argument(
        "--keras-weights",
        help="also time Keras model.predict with these weights, as the first candidate",
    )
    ap.add_argument(
        "--torch",
        action="store_true",
        help="also time the PyTorch twin (fp32, CPU) with the first model's weights (needs torch and a "
        "plain export of the first model)",
    )
    ap.add_argument(
        "--torch-compile",
        action="store_true",
        help="also time the twin under torch.compile(max-autotune)",
    )
    ap.add_argument(
        "--openvino",
        action="store_true",
        help="also OpenVINO (CPU) on the same files: f32 and bf16 (where the CPU has it) for fp32 graphs, "
        "INT8 for QDQ graphs",
    )
    args = ap.parse_args(argv)
    meta = begin_run(prog, argv, args.out, _bad_arguments(args), image=args.image or "seeded noise")
    if meta is None:
        return 1
    result = run(
        args.models,
        rounds=args.rounds,
        warmup=args.warmup,
        size=args.size,
        threads=args.threads,
        keras_weights=args.keras_weights,
        image=_load_image(args.image, args.size) if args.image else None,
        torch_peer=args.torch,
        torch_compile=args.torch_compile,
        openvino=args.openvino,
    )
    save_results(args.out, {**meta, **result}, to_markdown(result, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
