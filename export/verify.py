"""Numerical parity of the ONNX model against the Keras original.

The reference is always the user's untouched Keras model (``UpSampling2D``,
softmax head), so the verification also proves the conversion twin exact.
For the logits head the reference is the same model with the head's softmax
removed (that is what "logits" means).

Tolerances are named constants; each says why it is what it is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from unet_runtime.images import normalization

from .errors import VerificationError

__all__ = [
    "verify",
    "compare",
    "Case",
    "FP32_REL_L2",
    "FP16_REL_L2",
    "MASK_AGREEMENT_MIN",
    "CONFIDENT_MARGIN",
    "FP32_TIE_MARGIN",
    "MIN_CONFIDENT_PIXELS",
    "INT8_MASK_AGREEMENT_MIN",
    "int8_gate",
]

log = logging.getLogger(__name__)

#: fp32 vs fp32: only summation order differs (measured ~1e-7 on this
#: network; ANCHORS 7e-7 on confident weights), so 1e-5 leaves 10x headroom
#: and still catches any wrong op, layout or weight.
FP32_REL_L2 = 1e-5
#: fp16 keeps ~3 decimal digits; ANCHORS measured 6e-4..1.4e-3 on the
#: probabilities. 2e-2 is a sanity bound; the mask gate below is the real one.
FP16_REL_L2 = 2e-2
#: Class-mask agreement required on confident pixels (issue #2's gate).
MASK_AGREEMENT_MIN = 0.99
#: A pixel is confident when its fp32 top-1/top-2 probability margin is at
#: least this; below it, fp16 rounding may legitimately flip the argmax.
CONFIDENT_MARGIN = 0.05
#: For fp32 argmax masks every pixel whose margin exceeds fp32's error by
#: far (1e-4 >> 1e-6) must agree exactly: only true near-ties may differ.
FP32_TIE_MARGIN = 1e-4
#: INT8 gate (issue #6): class-mask agreement with the fp32 model on the
#: confident pixels of held-out images.
INT8_MASK_AGREEMENT_MIN = 0.98
#: INT8 probabilities move by ~1e-2 (8-bit activations); only a sanity bound.
INT8_REL_L2 = 0.25
#: Fewer confident pixels than this cannot support a 99% claim (1 miss = 1%);
#: the report then says the mask gate was not applicable.
MIN_CONFIDENT_PIXELS = 100


@dataclass(frozen=True)
class Case:
    """One verification input: batch size and spatial size."""

    batch: int
    height: int
    width: int


def make_pixels(case: Case, seed: int) -> np.ndarray:
    """Seeded random RGB images: uint8 NHWC."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(case.batch, case.height, case.width, 3), dtype=np.uint8)


def normalize(pixels: np.ndarray, mean, std) -> np.ndarray:
    """``(x/255 - mean)/std`` in float32, as the Keras model is fed: the runtime's and the graph's constants."""
    scale, shift = normalization(mean, std)
    return pixels.astype(np.float32) * scale + shift


def make_inputs(case: Case, mean, std, seed: int) -> np.ndarray:
    """Seeded random RGB images, normalized like real ones: float32 NHWC."""
    return normalize(make_pixels(case, seed), mean, std)


def _top2_margin(probs: np.ndarray) -> np.ndarray:
    part = np.partition(probs, -2, axis=-1)
    return part[..., -1] - part[..., -2]


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Max absolute and relative L2 error of ``candidate`` against ``reference``."""
    ref = reference.astype(np.float64)
    diff = candidate.astype(np.float64) - ref
    norm = np.linalg.norm(ref)
    return {
        "max_abs": float(np.abs(diff).max()),
        "rel_l2": float(np.linalg.norm(diff) / norm) if norm else float(np.linalg.norm(diff)),
    }


def mask_agreement(ref_probs: np.ndarray, mask: np.ndarray, margin: float) -> dict:
    """Agreement of ``mask`` with argmax(ref), overall and where the margin >= ``margin``."""
    ref_mask = ref_probs.argmax(-1)
    same = ref_mask == mask
    confident = _top2_margin(ref_probs) >= margin
    n_conf = int(confident.sum())
    return {
        "pixels": int(same.size),
        "agreement": float(same.mean()),
        "confident_margin": margin,
        "confident_pixels": n_conf,
        "confident_agreement": float(same[confident].mean()) if n_conf else None,
    }


def verify(keras_model, session, *, head: str, layout: str, precision: str, cases, mean, std, seed: int = 0,
           input_dtype: str = "float32"):
    """Run Keras and an ONNX Runtime session on the same inputs and gate the result.

    Args:
        keras_model: the original model (softmax head, NHWC).
        session: an ``onnxruntime.InferenceSession`` on the exported model.
        head, layout, precision: what the exported model is.
        cases: :class:`Case` list (batch 1 and a batch > 1 at least).
        mean, std: the normalization recorded in the model's metadata.
        input_dtype: ``uint8`` models get the raw pixels (Keras gets them normalized).

    Returns:
        The report: per case errors and agreement, plus the tolerances used.

    Raises:
        VerificationError: any gate failed; ``.report`` holds all figures.
    """
    from .convert import keras_logits_model

    logits_model = keras_logits_model(keras_model) if head == "logits" else None
    input_name = session.get_inputs()[0].name
    results, failures = [], []
    for i, case in enumerate(cases):
        pixels = make_pixels(case, seed + i)
        x = normalize(pixels, mean, std)
        t0 = time.perf_counter()
        ref_probs = np.asarray(keras_model(x, training=False), dtype=np.float32)
        ref_out = np.asarray(logits_model(x, training=False), dtype=np.float32) if logits_model else ref_probs
        t1 = time.perf_counter()
        feed = pixels if input_dtype == "uint8" else x
        feed = feed.transpose(0, 3, 1, 2) if layout == "nchw" else feed
        out = session.run(None, {input_name: np.ascontiguousarray(feed)})[0]
        t2 = time.perf_counter()
        if head != "argmax" and layout == "nchw":
            out = out.transpose(0, 2, 3, 1)
        row = {"batch": case.batch, "height": case.height, "width": case.width,
               "keras_s": round(t1 - t0, 4), "onnx_s": round(t2 - t1, 4)}
        expected_shape = ref_probs.shape[:-1] if head == "argmax" else ref_out.shape
        if out.shape != expected_shape:
            failures.append(f"case {case}: output shape {out.shape}, Keras gives {expected_shape}")
            results.append(row)
            continue
        if head == "argmax":
            mask = out
        else:
            row.update(compare(ref_out, out))
            mask = out.argmax(-1)
        margin = FP32_TIE_MARGIN if precision == "fp32" and head == "argmax" else CONFIDENT_MARGIN
        row.update(mask_agreement(ref_probs, mask, margin))
        failures += _gate(row, head, precision, case)
        results.append(row)
        log.info("verify: %s", row)
    report = {
        "passed": not failures,
        "failures": failures,
        "cases": results,
        "tolerances": {
            "rel_l2": {"fp32": FP32_REL_L2, "fp16": FP16_REL_L2}.get(precision, INT8_REL_L2),
            "mask_agreement_min": MASK_AGREEMENT_MIN if precision != "fp32" or head != "argmax" else 1.0,
            "confident_margin": CONFIDENT_MARGIN,
            "fp32_tie_margin": FP32_TIE_MARGIN,
            "min_confident_pixels": MIN_CONFIDENT_PIXELS,
        },
    }
    if failures:
        raise VerificationError("verification against Keras failed: " + "; ".join(failures), report)
    return report


def _gate(row: dict, head: str, precision: str, case: Case) -> list[str]:
    failures = []
    if precision == "int8":
        # Random-noise inputs are out of distribution for calibrated ranges:
        # the INT8 accuracy gate runs on held-out images (int8_gate); here
        # only a sanity bound on the probabilities.
        if head != "argmax" and not row["rel_l2"] <= INT8_REL_L2:
            failures.append(f"case {case}: int8 relative L2 error {row['rel_l2']:.3g} > {INT8_REL_L2}")
        return failures
    if head != "argmax":
        limit = FP32_REL_L2 if precision == "fp32" else FP16_REL_L2
        if not row["rel_l2"] <= limit:
            failures.append(
                f"case {case}: {head} relative L2 error {row['rel_l2']:.3g} > {limit:g} "
                f"(max abs {row['max_abs']:.3g}); a tolerance of {row['rel_l2']:.3g} would have been needed"
            )
    n_conf, agree = row["confident_pixels"], row["confident_agreement"]
    if precision == "fp32" and head == "argmax":
        if n_conf and agree < 1.0:
            failures.append(
                f"case {case}: fp32 mask differs from Keras on {round((1 - agree) * n_conf)} of {n_conf} "
                f"pixels whose margin is >= {FP32_TIE_MARGIN:g} (only near-ties may differ)"
            )
    elif n_conf >= MIN_CONFIDENT_PIXELS and agree < MASK_AGREEMENT_MIN:
        failures.append(
            f"case {case}: mask agreement {agree:.4f} < {MASK_AGREEMENT_MIN} on {n_conf} confident pixels"
        )
    return failures


def _iou(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean IoU between two masks over the classes present in either."""
    ious = []
    for c in range(num_classes):
        inter = np.logical_and(a == c, b == c).sum()
        union = np.logical_or(a == c, b == c).sum()
        if union:
            ious.append(inter / union)
    return float(np.mean(ious)) if ious else 1.0


def int8_gate(keras_model, fp32_session, int8_session, images, *, head: str, layout: str, mean, std,
              input_dtype: str = "float32") -> dict:
    """INT8 accuracy on held-out images, against the fp32 ONNX model and Keras.

    Reports mask agreement (all pixels and confident ones) and mean IoU;
    fails when agreement with fp32 on confident pixels is below
    ``INT8_MASK_AGREEMENT_MIN`` (with at least ``MIN_CONFIDENT_PIXELS`` of them).

    Raises:
        VerificationError: the gate failed; ``.report`` holds the figures.
    """
    num_classes = keras_model.output_shape[-1]
    name = fp32_session.get_inputs()[0].name

    def masks_of(session, batch):
        feed = batch if input_dtype == "uint8" else normalize(batch, mean, std)
        feed = np.ascontiguousarray(feed.transpose(0, 3, 1, 2) if layout == "nchw" else feed)
        out = session.run(None, {name: feed})[0]
        if head == "argmax":
            return out
        return (out.transpose(0, 2, 3, 1) if layout == "nchw" else out).argmax(-1)

    pixels = np.stack(images)
    ref_probs = np.asarray(keras_model(normalize(pixels, mean, std), training=False), np.float32)
    keras_mask = ref_probs.argmax(-1)
    fp32_mask, int8_mask = masks_of(fp32_session, pixels), masks_of(int8_session, pixels)
    confident = _top2_margin(ref_probs) >= CONFIDENT_MARGIN
    n_conf = int(confident.sum())

    def agree(a, b, where=None):
        same = a == b
        return float(same[where].mean()) if where is not None else float(same.mean())

    report = {
        "images": len(images),
        "pixels": int(int8_mask.size),
        "confident_pixels": n_conf,
        "vs_fp32": {"agreement": agree(int8_mask, fp32_mask), "mean_iou": _iou(int8_mask, fp32_mask, num_classes),
                    "confident_agreement": agree(int8_mask, fp32_mask, confident) if n_conf else None},
        "vs_keras": {"agreement": agree(int8_mask, keras_mask), "mean_iou": _iou(int8_mask, keras_mask, num_classes),
                     "confident_agreement": agree(int8_mask, keras_mask, confident) if n_conf else None},
        "fp32_vs_keras_agreement": agree(fp32_mask, keras_mask),
        "threshold": INT8_MASK_AGREEMENT_MIN,
        "gate_applied": n_conf >= MIN_CONFIDENT_PIXELS,
    }
    got = report["vs_fp32"]["confident_agreement"]
    if report["gate_applied"] and got < INT8_MASK_AGREEMENT_MIN:
        raise VerificationError(
            f"INT8 accuracy gate failed: mask agreement with fp32 is {got:.4f} on {n_conf} confident pixels of "
            f"{len(images)} held-out images (needs >= {INT8_MASK_AGREEMENT_MIN}); calibrate on more, and more "
            "representative, images (--calibration-images)", {"int8": report})
    return report
