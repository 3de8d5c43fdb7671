"""Execution-provider requests, their options, and fallback detection.

ONNX Runtime's Python wrapper silently falls back from TensorRT/CUDA to CPU
when a provider's libraries are missing (onnxruntime-gpu even lists
TensorRT as available without libnvinfer). So the request is resolved here,
the options are built here, and after the session exists
:func:`check_fallback` compares what runs with what was asked.

Options follow ONNX Runtime's provider documentation
(onnxruntime.ai/docs/execution-providers/{TensorRT,CUDA}-ExecutionProvider).
The CUDA defaults were chosen by measurement on an H100 (``bench-unet
--cuda-variants`` re-measures them): ``prefer_nhwc`` speeds up fp32 and
fp16, ``fuse_conv_bias`` speeds up fp16 but halves exact-fp32 (TF32 off)
throughput at batch 8, so it is off when ``exact``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ProviderError
from .wire import TRT_WORKSPACE_BYTES

__all__ = [
    "ProviderConfig",
    "resolve_providers",
    "parse_providers",
    "provider_options",
    "check_fallback",
    "default_cache_dir",
    "tensorrt_loadable",
    "ALIASES",
    "AUTO_ORDER",
]

log = logging.getLogger(__name__)

ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_SHORT = {v: k for k, v in ALIASES.items() if k != "trt"}


@dataclass
class ProviderConfig:
    """Tuning knobs for the providers; defaults chosen by measurement (module doc).

    Attributes:
        device_id: CUDA device for TensorRT and CUDA.
        exact: fp32 without TF32 (for parity checks); turns off fuse_conv_bias
            and TensorRT's fp16. TensorRT also builds fp32 layers with TF32
            unless the process runs with ``NVIDIA_TF32_OVERRIDE=0`` (no
            ORT option for it), so exact TensorRT parity needs that variable.
        prefer_nhwc, fuse_conv_bias, cudnn_conv_algo_search: CUDA EP options.
        cuda_graph: capture the run in a CUDA graph (fixed shapes, IO binding;
            the Segmenter binds fixed buffers). CUDA EP: ``enable_cuda_graph``;
            TensorRT EP: ``trt_cuda_graph_enable``, which ONNX Runtime allows
            only when every node of the model runs on TensorRT (its PR #16081).
            A shape's graph is captured on its third run and belongs to the
            calling thread (the CUDA EP keeps it per thread):
            ``Segmenter.warmup`` from the serving thread.
        trt_fp16: let TensorRT pick fp16 kernels.
        trt_cache_dir: engine and timing caches; default
            ``$XDG_CACHE_HOME/unet-onnx/tensorrt/<model sha256[:16]>``.
        trt_workspace_bytes: TensorRT builder workspace.
        trt_profile: ``(min, opt, max)`` input shapes, each a tuple; derived
            from the model input when ``None`` (batch 1..``trt_max_batch``).
        trt_max_batch: largest batch of the derived profile.
        cpu_threads: intra-op threads; default the number of physical cores.
        io_binding: run through fixed, reused input/output buffers on the
            session's device (``Segmenter``); ``None`` (default) binds on
            CUDA/TensorRT, where it saves two allocations a call and is what
            CUDA graphs need. ``True`` on the CPU runs the same code with CPU
            buffers (it buys nothing there; the tests use it to cover the path).
        extra: ``{provider name: {option: value}}`` added to (and overriding)
            the options above, for anything ONNX Runtime offers that this
            class does not name.
    """

    device_id: int = 0
    exact: bool = False
    prefer_nhwc: bool = True
    fuse_conv_bias: bool | None = None
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    cuda_graph: bool = False
    trt_fp16: bool = True
    trt_cache_dir: str | os.PathLike | None = None
    trt_workspace_bytes: int = TRT_WORKSPACE_BYTES
    trt_profile: tuple | None = None
    trt_max_batch: int = 8
    cpu_threads: int | None = None
    io_binding: bool | None = None
    extra: dict = field(default_factory=dict)


def tensorrt_loadable(capi_dir: str | None = None) -> bool:
    """Whether ONNX Runtime's TensorRT provider library loads here, TensorRT's own libraries included.

    onnxruntime-gpu lists TensorrtExecutionProvider as available whether or
    not TensorRT is installed; a session asked for it then logs a load error
    and falls back to CUDA. The provider
    library carries no RUNPATH, so loading it here resolves libnvinfer,
    libcudart ... exactly as ONNX Runtime's own load would (same process,
    same library path, same libraries already loaded, e.g. by
    ``onnxruntime.preload_dlls()``). Not cached: like ONNX Runtime, each
    session tries again, so a later ``preload_dlls()`` counts (a failed load
    of the provider library takes well under a millisecond). ``capi_dir``: where to look (tests);
    default, the installed onnxruntime's.
    """
    import ctypes

    if capi_dir is None:
        import onnxruntime

        capi_dir = str(Path(onnxruntime.__file__).parent / "capi")
    libs = sorted(Path(capi_dir).glob("*onnxruntime_providers_tensorrt*"))
    if not libs:
        return False
    try:
        ctypes.CDLL(str(libs[0]))
    except OSError as exc:
        log.info("TensorRT is listed by ONNX Runtime but cannot load (%s); 'auto' uses CUDA", exc)
        return False
    return True


def parse_providers(spec: str) -> str | list[str]:
    """A ``--providers`` flag's value as :class:`Segmenter` takes it: ``"auto"``, or the comma list split.

    ``"cuda,cpu"`` -> ``["cuda", "cpu"]``; names are checked later, by
    :func:`resolve_providers`, against what this ONNX Runtime has.
    """
    return "auto" if spec == "auto" else [p.strip() for p in spec.split(",") if p.strip()]


def resolve_providers(request: str | Sequence[str], available: Iterable[str]) -> list[str]:
    """Turn ``"auto"`` or a list of names/aliases into ORT provider names.

    ``"auto"`` is TensorRT, then CUDA, then CPU, as available, TensorRT only
    where its libraries load (:func:`tensorrt_loadable`): otherwise every
    default session would log a load error and a fallback warning for a
    provider the user never asked for. An explicit request keeps its order
    and always ends with CPU (ORT needs it for unsupported nodes); a
    provider asked for by name that does not run is reported by
    :func:`check_fallback`; names ORT does not know raise
    :class:`ProviderError`.
    """
    available = list(available)
    if isinstance(request, str):
        if request == "auto":
            auto = [p for p in AUTO_ORDER if p in available]
            if "TensorrtExecutionProvider" in auto and not tensorrt_loadable():
                auto.remove("TensorrtExecutionProvider")
            return auto or ["CPUExecutionProvider"]
        request = [request]
    if not request:
        raise ProviderError("providers is empty; use 'auto' or a list such as ['cuda', 'cpu']")
    names = []
    for item in request:
        name = ALIASES.get(str(item).lower(), item)
        if name not in AUTO_ORDER and name not in available:
            raise ProviderError(
                f"unknown provider {item!r}; allowed: 'auto', {', '.join(repr(k) for k in _SHORT.values())} "
                f"or an ONNX Runtime provider name (available here: {', '.join(available)})"
            )
        if name not in names:
            names.append(name)
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


def default_cache_dir() -> Path:
    """Root of the per-user cache (XDG), e.g. ``~/.cache/unet-onnx``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unet-onnx"


def _model_key(model_bytes_or_path) -> str:
    digest = hashlib.sha256()
    if isinstance(model_bytes_or_path, (bytes, bytearray)):
        digest.update(model_bytes_or_path)
    else:
        with open(model_bytes_or_path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _shape_str(input_name: str, shape: Sequence[int]) -> str:
    return f"{input_name}:{'x'.join(str(int(d)) for d in shape)}"


def trt_profile(
    input_name: str, input_shape: Sequence, layout: str, config: ProviderConfig
) -> tuple[str, str, str]:
    """TensorRT min/opt/max shape strings for the model's input.

    Fixed-size models: batch 1 / 1 / ``trt_max_batch`` at their size.
    Size-agnostic models: 64x64 / 512x512 / 1024x1024 (override with
    ``trt_profile``), batch as above.
    """
    shapes: Sequence[Sequence[int]]
    if config.trt_profile is not None:
        shapes = config.trt_profile
    else:
        hw_axes = (1, 2) if layout == "nhwc" else (2, 3)
        fixed = all(isinstance(input_shape[a], int) for a in hw_axes)
        sizes = (
            [tuple(input_shape[a] for a in hw_axes)] * 3
            if fixed
            else [(64, 64), (512, 512), (1024, 1024)]
        )
        shapes = [
            (batch, h, w, 3) if layout == "nhwc" else (batch, 3, h, w)
            for batch, (h, w) in zip((1, 1, config.trt_max_batch), sizes, strict=True)
        ]
    if len(shapes) != 3:
        raise ProviderError(f"trt_profile {shapes!r} must be (min, opt, max) shapes")
    low, opt, high = (_shape_str(input_name, s) for s in shapes)
    return low, opt, high


def provider_options(
    providers: Sequence[str],
    config: ProviderConfig,
    *,
    model,
    input_name: str,
    input_shape: Sequence,
    layout: str,
) -> list[dict]:
    """One options dict per provider, as ``InferenceSession(providers=..., provider_options=...)`` takes them."""
    out = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache = (
                Path(config.trt_cache_dir)
                if config.trt_cache_dir
                else default_cache_dir() / "tensorrt" / _model_key(model)
            )
            lo, opt, hi = trt_profile(input_name, input_shape, layout, config)
            opts = {
                "device_id": config.device_id,
                "trt_fp16_enable": config.trt_fp16 and not config.exact,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                "trt_max_workspace_size": config.trt_workspace_bytes,
                "trt_profile_min_shapes": lo,
                "trt_profile_opt_shapes": opt,
                "trt_profile_max_shapes": hi,
                "trt_cuda_graph_enable": config.cuda_graph,
            }
        elif name == "CUDAExecutionProvider":
            fuse = (not config.exact) if config.fuse_conv_bias is None else config.fuse_conv_bias
            opts = {
                "device_id": config.device_id,
                "cudnn_conv_algo_search": config.cudnn_conv_algo_search,
                "prefer_nhwc": config.prefer_nhwc,
                "fuse_conv_bias": fuse,
                "use_tf32": not config.exact,
                "enable_cuda_graph": config.cuda_graph,
                "do_copy_in_default_stream": True,
            }
        else:
            opts = {}
        opts.update(config.extra.get(name, {}))
        # ORT wants strings; bools as "1"/"0".
        out.append({k: (str(int(v)) if isinstance(v, bool) else str(v)) for k, v in opts.items()})
    return out


def prepare_trt_cache(options: dict) -> None:
    """Create the TensorRT cache folder, or raise a clear error if it cannot be written."""
    path = Path(options["trt_engine_cache_path"])
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProviderError(
            f"TensorRT cache folder {str(path)!r} cannot be created ({exc.strerror}); set trt_cache_dir to a writable folder"
        ) from exc
    if not os.access(path, os.W_OK):
        raise ProviderError(
            f"TensorRT cache folder {str(path)!r} is not writable; set trt_cache_dir to a writable folder"
        )


def check_fallback(requested: Sequence[str], running: Sequence[str], *, strict: bool) -> list[str]:
    """Compare requested with running providers; raise or warn once on a silent fallback.

    Returns the requested providers that are not running.
    """
    missing = [p for p in requested if p not in running and p != "CPUExecutionProvider"]
    if not missing:
        return []
    msg = (
        f"requested {', '.join(_SHORT.get(p, p) for p in missing)} but ONNX Runtime runs on "
        f"{', '.join(_SHORT.get(p, p) for p in running)}: the provider's libraries or device are missing "
        "(install onnxruntime-gpu with CUDA/cuDNN, or TensorRT for the tensorrt provider)"
    )
    if strict:
        raise ProviderError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    log.warning(msg)
    return missing
