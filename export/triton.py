"""A Triton Inference Server model repository from a verified export.

Layout (Triton's model repository docs)::

    REPO/NAME/config.pbtxt
    REPO/NAME/1/model.onnx
    REPO/NAME/1/test_data_set_0/input_0.pb, output_0.pb   (ONNX model-zoo test data)

Every input and output in ``config.pbtxt`` is read from the exported model
(names, data types, dims), never typed by hand. Key sources:
[R] triton-inference-server/onnxruntime_backend README (backend, TensorRT
accelerator parameters, CUDA accelerator, deprecated model parameters);
[M] triton-inference-server/server docs/user_guide/model_configuration.md
(max_batch_size, dims, dynamic_batching, instance_group, model_warmup).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, ExportError

__all__ = ["TritonOptions", "write_triton_repo", "render_config", "ACCELERATORS"]

ACCELERATORS = ("tensorrt", "cuda", "cpu")
_TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 2: "TYPE_UINT8", 7: "TYPE_INT64"}  # onnx TensorProto -> Triton


@dataclass
class TritonOptions:
    """What ``export-unet --triton-repo`` can be asked for."""

    repo: Path
    name: str = "vgg19_unet"
    max_batch_size: int = 8
    instances: int = 1
    accelerator: str = "tensorrt"
    preferred_batch_sizes: tuple[int, ...] = field(default_factory=lambda: (4, 8))
    max_queue_delay_us: int = 100
    force: bool = False

    def validate(self, verified_batch: int) -> None:
        """Raise ConfigError for any value Triton or this export cannot honour."""
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"--accelerator {self.accelerator!r} is not supported; choose one of {', '.join(ACCELERATORS)}")
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
            raise ConfigError(f"--preferred-batch-sizes {bad} must lie in 1..--max-batch-size ({self.max_batch_size})")
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
    if t.elem_type not in _TRITON_TYPES:
        raise ExportError(f"tensor {value_info.name!r} has ONNX type {t.elem_type}, which this writer does not map")
    return value_info.name, _TRITON_TYPES[t.elem_type], dims[1:]  # [M]: dims exclude the batch dimension


def _fmt(dims) -> str:
    """``1, 2, 3``: a pbtxt list body."""
    return ", ".join(str(d) for d in dims)


def render_config(model, opts: TritonOptions) -> str:
    """The ``config.pbtxt`` text for ``model`` (a ModelProto), with a comment per key's source."""
    (inp,), (out,) = model.graph.input, model.graph.output
    in_name, in_type, in_dims = _io(inp)
    out_name, out_type, out_dims = _io(out)
    batch_dim = inp.type.tensor_type.shape.dim[0]
    if batch_dim.dim_value:
        raise ExportError("the model's batch dimension is fixed; Triton batching needs it dynamic")
    lines = [
        f'name: "{opts.name}"',
        '# [R] the ONNX Runtime backend',
        'backend: "onnxruntime"',
        '# [M] > 0: Triton batches along the model\'s first (dynamic) dimension',
        f"max_batch_size: {opts.max_batch_size}",
        "# [M] names, types and dims (without the batch) read from the exported model",
        f'input [ {{ name: "{in_name}" data_type: {in_type} dims: [ {_fmt(in_dims)} ] }} ]',
        f'output [ {{ name: "{out_name}" data_type: {out_type} dims: [ {_fmt(out_dims)} ] }} ]',
        "# [M] dynamic batching: requests are grouped up to the preferred sizes",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {_fmt(opts.preferred_batch_sizes)} ]",
        f"  max_queue_delay_microseconds: {opts.max_queue_delay_us}",
        "}",
        "# [M] instance_group: copies of the model and where they run",
        f"instance_group [ {{ count: {opts.instances} kind: {'KIND_CPU' if opts.accelerator == 'cpu' else 'KIND_GPU'} }} ]",
    ]
    if opts.accelerator == "tensorrt":
        lines += [
            "# [R] TensorRT accelerator: FP16 engines, cached (first load builds them: minutes at 512x512)",
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {",
            '  name: "tensorrt"',
            '  parameters { key: "precision_mode" value: "FP16" }',
            '  parameters { key: "max_workspace_size_bytes" value: "4294967296" }',
            '  parameters { key: "trt_engine_cache_enable" value: "1" }',
            f'  parameters {{ key: "trt_engine_cache_path" value: "/tmp/triton_trt_cache/{opts.name}" }}',
            '  parameters { key: "trt_timing_cache_enable" value: "1" }',
            "} ] } }",
        ]
    elif opts.accelerator == "cuda":
        lines += [
            "# [R] CUDA EP options; prefer_nhwc + fuse_conv_bias measured fastest for fp16 on an H100",
            "# (benchmarks/results/h100-2026-11-25*.md: 2.12 ms vs 2.67 ms plain at batch 1)",
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {",
            '  name: "cuda"',
            '  parameters { key: "prefer_nhwc" value: "1" }',
            '  parameters { key: "fuse_conv_bias" value: "1" }',
            "} ] } }",
        ]
    if opts.accelerator != "cpu":
        lines += ['# [R] deprecated-form model parameter, still honoured: 0 = EXHAUSTIVE cuDNN algorithm search',
                  'parameters { key: "cudnn_conv_algo_search" value: { string_value: "0" } }']
    lines += [
        "# [M] warm-up: one zero batch at load, so the first real request does not pay for initialization",
        "model_warmup [ {",
        '  name: "zero_batch_1"',
        "  batch_size: 1",
        f'  inputs {{ key: "{in_name}" value: {{ data_type: {in_type} dims: [ {_fmt(d if d > 0 else 512 for d in in_dims)} ] zero_data: true }} }}',
        "} ]",
    ]
    return "\n".join(lines) + "\n"


def _test_data(model, folder: Path, input_batch: np.ndarray) -> None:
    """ONNX model-zoo test data: input_0.pb and output_0.pb (TensorProto), outputs from ONNX Runtime CPU."""
    import onnxruntime as ort
    from onnx import numpy_helper

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0].name
    out = session.run(None, {inp: input_batch})[0]
    folder.mkdir(parents=True)
    (folder / "input_0.pb").write_bytes(numpy_helper.from_array(input_batch, inp).SerializeToString())
    (folder / "output_0.pb").write_bytes(numpy_helper.from_array(out, session.get_outputs()[0].name).SerializeToString())


def write_triton_repo(model, opts: TritonOptions, test_input: np.ndarray) -> Path:
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
        (staging / "config.pbtxt").write_text(render_config(model, opts))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    return final
