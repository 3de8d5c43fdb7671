"""Opening a model: one place where ONNX Runtime sessions are made.

:func:`open_model` checks the file, reads what the model says of itself
(:class:`~unet_runtime.ModelInfo`, or what the graph shows when it carries no
metadata), resolves the providers, builds their options, creates the
session, and compares what runs with what was asked. ``Segmenter`` is built
on it; the benchmarks and tools that need a bare session use it too, so
every session of the project is made the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ModelFileError, SegmenterError
from .model_file import check_model_file
from .model_info import ModelInfo
from .providers import (
    ProviderConfig,
    check_fallback,
    prepare_trt_cache,
    provider_options,
    resolve_providers,
)
from .wire import WIRE_TYPES

__all__ = [
    "TensorSpec",
    "OpenedModel",
    "open_model",
    "session_options",
    "MAX_MODEL_SIDE",
    "ORT_DTYPES",
]

#: A declared input side larger than this is not a real model (a 32768^2
#: float32 image alone is 12 GiB); refuse it before allocating anything.
MAX_MODEL_SIDE = 32768

#: ONNX Runtime's type strings -> numpy, for the inputs and outputs this runtime handles (from the
#: wire table, the one home of every type name).
ORT_DTYPES = {t.ort: t.numpy.type for t in WIRE_TYPES if t.datatype in ("FP32", "FP16", "UINT8")}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, numpy dtype, and shape (``None`` or a name for symbolic dimensions)."""

    name: str
    dtype: type
    shape: tuple

    @classmethod
    def of(cls, arg) -> "TensorSpec":
        """From an ``onnxruntime.NodeArg``."""
        return cls(arg.name, ORT_DTYPES.get(arg.type, np.float32), tuple(arg.shape))


@dataclass
class OpenedModel:
    """A created session and what is known about it."""

    session: Any  # onnxruntime.InferenceSession (imported lazily)
    info: ModelInfo
    input: TensorSpec
    output: TensorSpec
    requested_providers: list[str]
    providers: list[str]
    fallback: list[str]


def _physical_cores() -> int:
    """Physical cores (psutil when installed; else the logical count, an upper bound)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def session_options(cpu_threads: int | None = None):
    """ONNX Runtime session options as every session of this project uses them.

    All graph optimizations; one intra-op thread per physical core unless
    ``cpu_threads`` (hyper-threads share FMA units, so more threads only
    contend); warnings and up only.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = cpu_threads or _physical_cores()
    opts.log_severity_level = 3
    return opts


def _check_io(session, layout: str | None) -> None:
    """One input, one output, a 4-D float/uint8 input; with ``layout``, 3 channels where it says."""
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1 or len(outs) != 1:
        raise ModelFileError(
            f"the model has {len(ins)} inputs and {len(outs)} outputs; a VGG19-UNet export has one of each"
        )
    shape = ins[0].shape
    channels_ok = layout is None or (len(shape) == 4 and shape[3 if layout == "nhwc" else 1] == 3)
    if len(shape) != 4 or not channels_ok or ins[0].type not in ORT_DTYPES:
        raise ModelFileError(
            f"the model's input {ins[0].name!r} is {ins[0].type} {shape}; this runtime needs a 4-D float/uint8 "
            f"RGB input (NHWC or NCHW with 3 channels): is this a VGG19-UNet export?"
        )
    for d in shape:
        if isinstance(d, int) and not 0 <= d <= MAX_MODEL_SIDE:
            raise ModelFileError(
                f"the model's input {ins[0].name!r} declares shape {shape}: dimension {d} is outside 0..{MAX_MODEL_SIDE}; "
                "the file is corrupt or not a VGG19-UNet export"
            )


def _model_info(session, overrides: dict) -> ModelInfo:
    props = session.get_modelmeta().custom_metadata_map
    try:
        info = ModelInfo.from_metadata(props)
    except ValueError as exc:
        raise ModelFileError(f"model metadata is malformed: {exc}; re-export the model") from exc
    if info is not None:
        return info
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    try:
        return ModelInfo.infer(inp.shape, out.shape, out.type == "tensor(uint8)", **overrides)
    except ValueError as exc:
        raise ModelFileError(f"the model has no export-unet metadata and {exc}") from exc


def open_model(
    model_path: str | os.PathLike,
    providers: str | Sequence[str] = "auto",
    config: ProviderConfig | None = None,
    *,
    strict: bool = False,
    overrides: dict | None = None,
) -> OpenedModel:
    """Check ``model_path``, read its metadata, and create a session on ``providers``.

    Args:
        model_path: the ``.onnx`` file.
        providers: ``"auto"`` or a list of names/aliases (see :func:`~unet_runtime.providers.resolve_providers`).
        config: provider tuning.
        strict: raise :class:`~unet_runtime.ProviderError` when a requested provider does not run.
        overrides: ``layout``, ``head``, ``num_classes``, ``mean``, ``std`` for a model without metadata.

    Raises:
        ModelFileError: the file is missing, unsafe, malformed or not this network.
        SegmenterError: ONNX Runtime cannot create the session.
    """
    import onnxruntime as ort

    path = Path(model_path)
    config = config or ProviderConfig()
    # Before ONNX Runtime touches it: size, protobuf shape, external-data paths.
    check_model_file(path)
    requested = resolve_providers(providers, ort.get_available_providers())
    opts = session_options(config.cpu_threads)
    # Probe the model's input on CPU first: TensorRT needs its shape to
    # build a profile, and a broken file should fail before a GPU init.
    # For a GPU session the probe is thrown away, so it skips graph
    # optimization; CPU-only, the probe is the session.
    cpu_only = requested == ["CPUExecutionProvider"]
    probe_opts = opts
    if not cpu_only:
        probe_opts = session_options(config.cpu_threads)
        probe_opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        probe = ort.InferenceSession(str(path), probe_opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
        raise ModelFileError(
            f"model file {str(path)!r} cannot be loaded by ONNX Runtime: {str(exc).splitlines()[0][:300]}"
        ) from exc
    _check_io(probe, None)
    info = _model_info(probe, {k: v for k, v in (overrides or {}).items() if v is not None})
    _check_io(probe, info.layout)
    inp, out = TensorSpec.of(probe.get_inputs()[0]), TensorSpec.of(probe.get_outputs()[0])
    if cpu_only:
        session = probe
    else:
        del probe
        popts = provider_options(
            requested,
            config,
            model=str(path),
            input_name=inp.name,
            input_shape=list(inp.shape),
            layout=info.layout,
        )
        for name, o in zip(requested, popts, strict=True):
            if name == "TensorrtExecutionProvider":
                prepare_trt_cache(o)
        try:
            session = ort.InferenceSession(
                str(path), opts, providers=requested, provider_options=popts
            )
        except Exception as exc:
            raise SegmenterError(
                f"ONNX Runtime could not create a session with {requested}: {str(exc).splitlines()[0][:300]}"
            ) from exc
    running = session.get_providers()
    fallback = check_fallback(requested, running, strict=strict)
    return OpenedModel(session, info, inp, out, requested, running, fallback)
