"""One benchmark row: a session (or peer) timed device-resident and host-to-host."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .timing import summarize, time_calls

__all__ = ["Row", "bench_ort", "agreement"]


@dataclass
class Row:
    """A configuration and everything measured for it."""

    name: str
    engine: str
    provider: str
    precision: str
    head: str
    size: int
    batch: int
    options: dict = field(default_factory=dict)
    setup_s: float | None = None
    device: dict | None = None
    host: dict | None = None
    raw_device_s: list = field(default_factory=list)
    raw_host_s: list = field(default_factory=list)
    numerics: dict | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    overhead: dict | None = None
    note: str = ""


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_mem_mb() -> float | None:
    """Device memory this process holds now (nvidia-smi), or None without a GPU."""
    import os
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        pid, _, mem = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(mem)
    return None


def agreement(
    ref_probs: list,
    masks: list,
    labels: list | None = None,
    probs: list | None = None,
    margin: float = 0.05,
) -> dict:
    """A row's masks (and probabilities) against the fp32 reference, over every benchmark image; and the labels.

    ``ref_probs``: per image ``(H, W, C)`` fp32 reference probabilities;
    ``masks``: the row's ``(H, W)`` masks for the same images; ``probs``:
    its probabilities (softmax/logits rows), for the relative L2 error;
    ``labels``: ground truth, for pixel accuracy and mean IoU.
    """
    from unet_runtime.metrics import compare, label_scores, mask_agreement

    ref = np.stack(ref_probs[: len(masks)])
    agree = mask_agreement(ref, np.stack(masks), margin)
    res = {
        "agreement_images": len(masks),
        "pixels": agree["pixels"],
        "mask_agreement": agree["agreement"],
        "confident_pixels": agree["confident_pixels"],
        "confident_agreement": agree["confident_agreement"],
    }
    if probs is not None:
        res["rel_l2"] = compare(ref, np.stack(probs))["rel_l2"]
    if labels is not None:
        res.update(label_scores(labels[: len(masks)], masks, ref.shape[-1]))
    return res


def bench_ort(
    model_path,
    *,
    provider: str,
    config,
    head: str,
    precision: str,
    size: int,
    batch: int,
    images: list,
    ref_probs: list | None,
    warmup: int,
    iters: int,
    flops: int | None,
    name: str | None = None,
    progress=None,
    labels: list | None = None,
) -> Row:
    """Time one ONNX Runtime configuration through :class:`unet_runtime.Segmenter`.

    device: the session alone on a prepared input (IO binding with
    device-resident input and output on CUDA/TensorRT; ``session.run`` on
    CPU). host: ``Segmenter.predict`` on uint8 images (pre-processing, copies,
    argmax/mask post-processing included).
    """

    from unet_runtime import Segmenter

    t0 = time.perf_counter()
    seg = Segmenter(model_path, providers=[provider], config=config, strict=True)
    setup = time.perf_counter() - t0
    row = Row(
        name=name or f"ort {provider} {precision} {head}",
        engine="onnxruntime",
        provider=provider,
        precision=precision,
        head=head,
        size=size,
        batch=batch,
        setup_s=setup,
        options={k: v for k, v in vars(config).items() if k not in ("extra",)},
    )
    # device-resident input (IO binding) on CUDA/TensorRT
    call = seg.engine.bind(seg.engine.prepare(images[:batch]))
    on_gpu = provider != "cpu"

    def fetch():
        call.run()
        return call.fetch()

    if getattr(config, "cuda_graph", False):
        from unet_runtime.segmenter import CUDA_GRAPH_CAPTURE_RUNS

        # A smaller --warmup would put the capture run (and the two before it) among the timed runs.
        warmup = max(warmup, CUDA_GRAPH_CAPTURE_RUNS)
    row.raw_device_s = time_calls(call.run, warmup=warmup, iters=iters, on_iter=progress)
    row.device = summarize(row.raw_device_s, batch, flops)
    if ref_probs is not None:
        # Every benchmark image, in batches of the row's batch size, through the same session
        # and the runtime's own post-processing (images are at the network size: no resize).
        masks, probs = [], []
        for first in range(0, len(ref_probs), batch):
            chunk = images[first : min(first + batch, len(ref_probs))]
            if head == "argmax":
                masks += seg.predict(chunk)
            else:
                for mask, prob in seg.predict_with_proba(chunk):
                    masks.append(mask)
                    probs.append(prob)
        row.numerics = agreement(ref_probs, masks, labels, probs or None)
    if on_gpu:
        # The host path goes through Segmenter.predict: same buffers, plus copies and
        # pre/post-processing.
        row.raw_host_s = time_calls(
            lambda: seg.predict(images[:batch]),
            warmup=max(2, warmup // 2),
            iters=iters,
            on_iter=progress,
        )
        row.host = summarize(row.raw_host_s, batch, flops)
    else:
        row.raw_host_s = time_calls(
            lambda: seg.predict(images[:batch]),
            warmup=1,
            iters=max(3, iters // 3),
            on_iter=progress,
        )
        row.host = summarize(row.raw_host_s, batch, flops)
    # The runtime's own pre/post-processing, measured directly: the same
    # Pipeline.predict with the inference replaced by the cached output
    # (host minus device medians would mix in run-to-run noise).
    cached = fetch()
    pre_post = time_calls(
        lambda: seg.engine.pipeline.predict(images[:batch], lambda _x: cached),
        warmup=1,
        iters=max(5, iters),
    )
    med = float(np.median(pre_post)) * 1e3
    row.overhead = {"pre_post_ms": med, "share_of_session": med / row.device["median_ms"]}
    row.peak_rss_mb = _peak_rss_mb()
    row.peak_gpu_mb = _gpu_mem_mb() if on_gpu else None
    seg.close()
    return row
