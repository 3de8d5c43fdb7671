"""A Triton Inference Server model repository from a verified export.

Layout (Triton's model repository docs)::

    REPO/NAME/config.pbtxt
    REPO/NAME/1/model.onnx
    REPO/NAME/1/test_data_set_0/input_0.pb, output_0.pb   (ONNX model-zoo test data)

Every input and output in ``config.pbtxt`` is read from the exported model
(names, data types, dims), never typed by hand, and every other key is one of
:data:`CONFIG_KEYS`, each with the source that accepts it: Triton's
``model_config.proto``, the ONNX Runtime backend's ``src/onnxruntime.cc``
(it refuses a TensorRT accelerator parameter it does not know, and hands
CUDA accelerator parameters to ONNX Runtime, which refuses unknown ones),
and ONNX Runtime's provider options. The serving configuration follows the
export's precision: an fp32 or fp16 model gets the TensorRT (or CUDA)
accelerator in that precision, an INT8 model (QDQ, calibrated and verified
for ONNX Runtime's CPU kernels) CPU instances.

The model's own metadata (size, layout, normalization, head, classes) is
repeated in the config's ``parameters``, which the backend ignores (it reads
only the keys it knows), so a client can pre- and post-process from the
server alone, without a copy of ``model.onnx``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from unet_runtime.wire import METADATA_PREFIX, TRT_WORKSPACE_BYTES, by_onnx

from .errors import ConfigError, ExportError

__all__ = [
    "TritonOptions",
    "write_triton_repo",
    "render_config",
    "ACCELERATORS",
    "CONFIG_KEYS",
    "TRITON_CONTAINER",
    "config_keys",
]

#: ``auto``: TensorRT for fp32 and fp16 exports, CPU instances for INT8.
ACCELERATORS = ("auto", "tensorrt", "cuda", "cpu")
#: The Triton release every key below was checked against: container 26.07 = Triton 2.71.0, whose ONNX
#: Runtime backend is built with ONNX Runtime 1.27.0 (triton-inference-server/server build.py at v2.71.0).
TRITON_CONTAINER = "nvcr.io/nvidia/tritonserver:26.07-py3"

_BACKEND = (
    "triton-inference-server/onnxruntime_backend src/onnxruntime.cc (last changed bf2266d, 2026-01-28; "
    "releases 26.02 to 26.07): the TensorRT accelerator's known parameters, anything else is refused"
)
_ORT_CUDA = (
    "ONNX Runtime 1.27.0 CUDA EP provider options (names in libonnxruntime_providers_cuda.so of "
    "onnxruntime-gpu 1.27.0); the backend passes them to UpdateCUDAProviderOptions, which refuses unknown ones"
)
_BACKEND_MODEL = (
    "onnxruntime_backend src/onnxruntime.cc: model-level parameters it reads (deprecated form of the "
    "CUDA options); other keys are ignored"
)
_OURS = "read by unet_runtime's TritonSegmenter (ModelInfo metadata keys); the backend ignores them"

#: Where each key we write goes, and who accepts it.
CONFIG_KEYS: dict[str, dict[str, str]] = {
    "tensorrt": {  # optimization.execution_accelerators.gpu_execution_accelerator[name: "tensorrt"].parameters
        "precision_mode": _BACKEND,
        "max_workspace_size_bytes": _BACKEND,
        "trt_engine_cache_enable": _BACKEND,
        "trt_engine_cache_path": _BACKEND,
        "trt_engine_cache_prefix": _BACKEND,
        "trt_timing_cache_enable": _BACKEND,
        "trt_timing_cache_path": _BACKEND,
        "trt_profile_min_shapes": _BACKEND,
        "trt_profile_opt_shapes": _BACKEND,
        "trt_profile_max_shapes": _BACKEND,
    },
    "cuda": {  # ...gpu_execution_accelerator[name: "cuda"].parameters
        "prefer_nhwc": _ORT_CUDA,
        "fuse_conv_bias": _ORT_CUDA,
    },
    "model": {  # parameters (model level)
        "cudnn_conv_algo_search": _BACKEND_MODEL,
    },
}
#: Model-level parameters whose names start with this carry the model's metadata for clients.
CLIENT_PREFIX = METADATA_PREFIX


@dataclass
class TritonOptions:
    """What ``export-unet --triton-repo`` can be asked for."""

    repo: Path
    name: str = "vgg19_unet"
    max_batch_size: int = 8
    instances: int = 1
    accelerator: str = "auto"
    #: empty: Triton's dynamic batcher forms batches of any size up to max_batch_size (its guide's advice).
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    #: TensorRT engine and timing caches: a folder in the container (mount a volume there, see docs/deployment.md).
    trt_cache_dir: str = "/trt_cache"
    #: Size-agnostic exports: the largest H and W the TensorRT profile covers.
    max_image_side: int = 1024
    force: bool = False

    def resolved(self, precision: str) -> "TritonOptions":
        """These options with ``auto`` replaced by the accelerator for ``precision``."""
        if self.accelerator != "auto":
            return self
        return replace(self, accelerator="cpu" if precision == "int8" else "tensorrt")

    def validate(self, verified_batch: int, precision: str = "fp32") -> None:
        """Raise ConfigError for any value Triton or this export cannot honour, naming the fix."""
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(
                f"--accelerator {self.accelerator!r} is not supported; choose one of {', '.join(ACCELERATORS)}"
            )
        acc = self.resolved(precision).accelerator
        if precision == "int8" and acc != "cpu":
            raise ConfigError(
                f"--accelerator {acc} with --precision int8: the INT8 model (QDQ, uint8 activations) is calibrated and "
                "verified for ONNX Runtime's CPU kernels; TensorRT takes only symmetric int8 Q/DQ and the CUDA EP runs "
                "Q/DQ in float. Use --accelerator cpu (the default for int8), or --precision fp16 for GPUs"
            )
        if precision == "fp16" and acc == "cpu":
            raise ConfigError(
                "--accelerator cpu with --precision fp16: ONNX Runtime's CPU kernels run an fp16 model "
                "through casts, slower than fp32; use --precision fp32 or int8 for CPU instances, or "
                "--accelerator tensorrt / cuda"
            )
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size {self.max_batch_size} must be >= 1")
        if self.max_batch_size > verified_batch:
            raise ConfigError(
                f"--max-batch-size {self.max_batch_size} is larger than the largest batch the export verifies "
                f"({verified_batch}); use --max-batch-size {verified_batch} or less"
            )
        if self.instances < 1:
            raise ConfigError(f"--instances {self.instances} must be >= 1")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"--max-queue-delay-us {self.max_queue_delay_us} must be >= 0")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ConfigError(
                f"--preferred-batch-sizes {list(bad)} must lie in 1..--max-batch-size "
                f"({self.max_batch_size}); drop the flag to let the batcher use any size"
            )
        cache = PurePosixPath(self.trt_cache_dir)
        if not cache.is_absolute() or ".." in cache.parts or cache == PurePosixPath("/"):
            raise ConfigError(
                f"--trt-cache-dir {self.trt_cache_dir!r} must be an absolute folder in the container "
                "(a mounted volume, e.g. /trt_cache)"
            )
        if self.max_image_side < 16 or self.max_image_side % 16:
            raise ConfigError(
                f"--max-image-side {self.max_image_side} must be a positive multiple of 16"
            )
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"--triton-name {self.name!r} must be a plain folder name")
        target = Path(self.repo)
        if target.exists() and not target.is_dir():
            raise ConfigError(f"--triton-repo {str(target)!r} exists and is not a folder")
        if target.is_dir() and any(target.iterdir()) and not self.force:
            raise ConfigError(
                f"--triton-repo {str(target)!r} exists and is not empty; choose an empty folder or pass --force "
                f"(which replaces only {self.name}/ inside it)"
            )


def _io(value_info) -> tuple[str, str, list[int]]:
    t = value_info.type.tensor_type
    dims = [d.dim_value if d.dim_value else -1 for d in t.shape.dim]
    try:
        triton_type = by_onnx(t.elem_type).triton
    except KeyError as exc:
        raise ExportError(
            f"tensor {value_info.name!r} has ONNX type {t.elem_type}, which this writer does not map"
        ) from exc
    return value_info.name, triton_type, dims[1:]  # dims exclude the batch dimension


def _fmt(dims) -> str:
    """``1, 2, 3``: a pbtxt list body."""
    return ", ".join(str(d) for d in dims)


def _shapes(name: str, dims: list[int], batch: int, side: int) -> str:
    """A TensorRT profile shape string ``input:BxHxWx3``, with ``side`` for every symbolic dimension."""
    return f"{name}:" + "x".join(str(d) for d in [batch, *(d if d > 0 else side for d in dims)])


def _trt_params(
    opts: TritonOptions, precision: str, in_name: str, in_dims: list[int]
) -> dict[str, str]:
    """The TensorRT accelerator's parameters: precision, caches, one optimization profile for batch 1..max."""
    dynamic = any(d < 0 for d in in_dims)
    opt_side = min(512, opts.max_image_side)
    return {
        "precision_mode": {"fp16": "FP16"}.get(precision, "FP32"),
        "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": opts.trt_cache_dir,
        "trt_engine_cache_prefix": opts.name,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": opts.trt_cache_dir,
        # One profile from batch 1 to max_batch_size (and, size-agnostic, 16 px to max_image_side):
        # without it ONNX Runtime builds an engine for each new shape it meets, minutes in the
        # middle of serving.
        "trt_profile_min_shapes": _shapes(in_name, in_dims, 1, 16 if dynamic else 0),
        "trt_profile_opt_shapes": _shapes(in_name, in_dims, opts.max_batch_size, opt_side),
        "trt_profile_max_shapes": _shapes(
            in_name, in_dims, opts.max_batch_size, opts.max_image_side
        ),
    }


def _cuda_params() -> dict[str, str]:
    """The CUDA accelerator's parameters: NHWC convolutions and conv+bias fusion.

    Both are unet_runtime's ProviderConfig defaults (measured fastest; see
    runtime/providers.py); fp32 runs with ONNX Runtime's default TF32 on
    Ampere and newer GPUs. The cuDNN search is the model-level parameter.
    """
    return {"prefer_nhwc": "1", "fuse_conv_bias": "1"}


def render_config(model, opts: TritonOptions, precision: str = "fp32") -> str:
    """The ``config.pbtxt`` text for ``model`` (a ModelProto, with its metadata) served at ``precision``."""
    opts = opts.resolved(precision)
    (inp,), (out,) = model.graph.input, model.graph.output
    in_name, in_type, in_dims = _io(inp)
    out_name, out_type, out_dims = _io(out)
    if inp.type.tensor_type.shape.dim[0].dim_value:
        raise ExportError("the model's batch dimension is fixed; Triton batching needs it dynamic")
    kind = "KIND_CPU" if opts.accelerator == "cpu" else "KIND_GPU"
    lines = [
        f'name: "{opts.name}"',
        'backend: "onnxruntime"',
        "# > 0: Triton batches requests along the model's first (dynamic) dimension",
        f"max_batch_size: {opts.max_batch_size}",
        "# names, types and dims (without the batch) read from the exported model",
        f'input [ {{ name: "{in_name}" data_type: {in_type} dims: [ {_fmt(in_dims)} ] }} ]',
        f'output [ {{ name: "{out_name}" data_type: {out_type} dims: [ {_fmt(out_dims)} ] }} ]',
        "dynamic_batching {",
        *(
            [f"  preferred_batch_size: [ {_fmt(opts.preferred_batch_sizes)} ]"]
            if opts.preferred_batch_sizes
            else []
        ),
        f"  max_queue_delay_microseconds: {opts.max_queue_delay_us}",
        "}",
        f"instance_group [ {{ count: {opts.instances} kind: {kind} }} ]",
    ]
    accelerator = {
        "tensorrt": lambda: _trt_params(opts, precision, in_name, in_dims),
        "cuda": _cuda_params,
    }.get(opts.accelerator)
    if accelerator is not None:
        lines += [
            f"# {precision} export served by the {opts.accelerator} accelerator",
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {",
            f'  name: "{opts.accelerator}"',
        ]
        lines += [f'  parameters {{ key: "{k}" value: "{v}" }}' for k, v in accelerator().items()]
        lines.append("} ] } }")
    # 0 = EXHAUSTIVE (the backend's mapping)
    params = {"cudnn_conv_algo_search": "0"} if kind == "KIND_GPU" else {}
    params.update({p.key: p.value for p in model.metadata_props if p.key.startswith(CLIENT_PREFIX)})
    lines.append("# the model's metadata for clients (the backend ignores keys it does not know)")
    lines += [
        f'parameters {{ key: "{k}" value: {{ string_value: "{_escape(v)}" }} }}'
        for k, v in params.items()
    ]
    warm_dims = [d if d > 0 else min(512, opts.max_image_side) for d in in_dims]
    lines += [
        "# warm-up at the batch sizes the engine is built for, before the model is marked ready",
        "model_warmup [",
    ]
    for batch in dict.fromkeys((1, opts.max_batch_size)):
        lines += [
            "  {",
            f'    name: "zero_batch_{batch}"',
            f"    batch_size: {batch}",
            f'    inputs {{ key: "{in_name}" value: {{ data_type: {in_type} dims: [ {_fmt(warm_dims)} ] '
            "zero_data: true } }",
            "  },",
        ]
    lines[-1] = "  }"
    lines.append("]")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    """A pbtxt string literal's body."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def config_keys(config_text: str) -> dict[str, list[str]]:
    """Every accelerator and model-level parameter key in a config.pbtxt, by where it sits (tests check them)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    keys: dict[str, list[str]] = {"model": list(cfg.parameters)}
    for acc in cfg.optimization.execution_accelerators.gpu_execution_accelerator:
        keys[acc.name] = list(acc.parameters)
    return keys


def _test_data(model, folder: Path, input_batch: np.ndarray) -> None:
    """ONNX model-zoo test data: input_0.pb and output_0.pb (TensorProto), outputs from ONNX Runtime CPU."""
    import onnxruntime as ort
    from onnx import numpy_helper

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0].name
    out = session.run(None, {inp: input_batch})[0]
    folder.mkdir(parents=True)
    (folder / "input_0.pb").write_bytes(
        numpy_helper.from_array(input_batch, inp).SerializeToString()
    )
    (folder / "output_0.pb").write_bytes(
        numpy_helper.from_array(out, session.get_outputs()[0].name).SerializeToString()
    )


def write_triton_repo(
    model, opts: TritonOptions, test_input: np.ndarray, precision: str = "fp32"
) -> Path:
    """Write ``REPO/NAME`` (config, model, test data); returns the model folder.

    Built in a temporary folder beside it and moved into place, so a failure
    never leaves a half-written model folder; with ``force`` only ``NAME/`` is
    replaced, nothing else in the repository is touched.
    """
    repo = Path(opts.repo)
    repo.mkdir(parents=True, exist_ok=True)
    final = repo / opts.name
    with tempfile.TemporaryDirectory(prefix=f".{opts.name}.", dir=repo) as tmp:
        staging = Path(tmp) / opts.name
        version = staging / "1"
        version.mkdir(parents=True)
        (version / "model.onnx").write_bytes(model.SerializeToString())
        _test_data(model, version / "test_data_set_0", test_input)
        (staging / "config.pbtxt").write_text(render_config(model, opts, precision))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    return final
