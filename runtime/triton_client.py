"""A client for the model served by Triton Inference Server (KServe v2 protocol).

Sends images to a Triton server over HTTP or gRPC and returns masks, with
the runtime's own pre/post-processing (:class:`~unet_runtime.pipeline.Pipeline`):
the same resize/pad, normalization and layout as a local
:class:`~unet_runtime.Segmenter`, so both give the same masks. Needs the
``triton`` extra (``pip install "unet-onnx[triton]"``).

    client = TritonSegmenter("localhost:8000", "vgg19_unet", model_file="repo/vgg19_unet/1/model.onnx")
    mask = client.predict(image)
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .pipeline import Pipeline
from .errors import SegmenterError
from .model_file import read_metadata
from .model_info import INPUT_NAME, OUTPUT_NAMES, ModelInfo

__all__ = ["TritonSegmenter"]

_NP = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}


class TritonSegmenter:
    """Masks from a Triton-served VGG19-UNet.

    Args:
        url: ``host:port`` of Triton's HTTP (8000) or gRPC (8001) endpoint.
        model_name: the model's folder name in the repository.
        protocol: ``"http"`` or ``"grpc"``.
        model_file: the repository's ``model.onnx`` (read for its metadata:
            size, layout, normalization, head), or pass ``info``.
        info: a :class:`ModelInfo` when the file is not at hand.
        input_name, output_name, input_datatype: as in ``config.pbtxt``
            (export-unet's defaults: ``input``, the head's output name, FP32).
    """

    def __init__(self, url: str, model_name: str, *, protocol: str = "http", model_file: str | os.PathLike | None = None,
                 info: ModelInfo | None = None, input_name: str = INPUT_NAME, output_name: str | None = None,
                 input_datatype: str | None = None, model_version: str = ""):
        if protocol not in ("http", "grpc"):
            raise SegmenterError(f"protocol {protocol!r} is not supported; use 'http' or 'grpc'")
        if info is None:
            if model_file is None:
                raise SegmenterError("pass model_file= (the repository's model.onnx) or info= so the client knows how to pre-process")
            info = ModelInfo.from_metadata(read_metadata(model_file))
            if info is None:
                raise SegmenterError(f"{model_file!s} has no export-unet metadata; pass info=ModelInfo(...)")
        try:
            if protocol == "http":
                import tritonclient.http as tc
            else:
                import tritonclient.grpc as tc
        except ImportError as exc:
            raise SegmenterError("the Triton client needs tritonclient: pip install 'unet-onnx[triton]'") from exc
        self._tc = tc
        self.info = info
        self.model_name, self.model_version = model_name, model_version
        self.input_name = input_name
        self.output_name = output_name or OUTPUT_NAMES[info.head]
        self.input_datatype = input_datatype or {"uint8": "UINT8"}.get(info.input_dtype, "FP32")
        self._client = tc.InferenceServerClient(url=url)
        self._pipeline = Pipeline(info, _NP[self.input_datatype])

    def build_request(self, x: np.ndarray):
        """The InferInput/InferRequestedOutput pair for one model-ready batch (binary tensor data)."""
        tc = self._tc
        inp = tc.InferInput(self.input_name, list(x.shape), self.input_datatype)
        if tc.__name__.endswith("http"):
            inp.set_data_from_numpy(x, binary_data=True)
            out = tc.InferRequestedOutput(self.output_name, binary_data=True)
        else:
            inp.set_data_from_numpy(x)
            out = tc.InferRequestedOutput(self.output_name)
        return [inp], [out]

    def _infer(self, x: np.ndarray) -> np.ndarray:
        inputs, outputs = self.build_request(x)
        try:
            result = self._client.infer(self.model_name, inputs, outputs=outputs, model_version=self.model_version)
        except Exception as exc:  # tritonclient raises InferenceServerException and transport errors
            raise SegmenterError(f"Triton request to {self.model_name!r} failed: {exc}") from exc
        return result.as_numpy(self.output_name)

    def predict(self, images: np.ndarray | Sequence[np.ndarray]):
        """Masks, exactly as :meth:`Segmenter.predict` (one image or a list)."""
        return self._pipeline.predict(images, self._infer)

    def predict_proba(self, images):
        """Probabilities, exactly as :meth:`Segmenter.predict_proba`."""
        return self._pipeline.predict_proba(images, self._infer)

    def predict_with_proba(self, images):
        """Masks and probabilities from one request, exactly as :meth:`Segmenter.predict_with_proba`."""
        return self._pipeline.predict_with_proba(images, self._infer)

    def close(self) -> None:
        """Close the connection."""
        self._client.close()
