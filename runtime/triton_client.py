"""A client for the model served over the Open Inference Protocol (KServe v2): Triton, or ``segment-unet serve``.

Sends images to the server over HTTP or gRPC and returns masks, with the
runtime's own pre/post-processing (:class:`~unet_runtime.pipeline.Pipeline`):
the same resize/pad, normalization and layout as a local
:class:`~unet_runtime.Segmenter`, so both give the same masks. Everything it
needs is read from the server once, at construction: the model
configuration's ``parameters`` (size, layout, normalization, head, classes:
``export-unet --triton-repo`` writes them into ``config.pbtxt``), the input
and output names and types, and ``max_batch_size``, by which larger batches
are split. Needs the ``triton`` extra (tritonclient: ``pip install ".[triton]"`` in a clone).

    client = TritonSegmenter("localhost:8000", "vgg19_unet")            # HTTP
    client = TritonSegmenter("localhost:8001", "vgg19_unet", protocol="grpc")
    mask = client.predict(image)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import SegmenterError
from .model_info import ModelInfo
from .pipeline import Pipeline
from .wire import METADATA_PREFIX, by_triton

__all__ = ["TritonSegmenter"]

#: The input types an export can have (wire names).
_INPUT_TYPES = ("FP32", "FP16", "UINT8")


class TritonSegmenter:
    """Masks from a VGG19-UNet served by Triton or ``segment-unet serve``.

    Args:
        url: ``host:port`` of the server's HTTP (Triton: 8000) or gRPC (8001) endpoint.
        model_name: the model's name on the server.
        protocol: ``"http"`` or ``"grpc"``.
        timeout_s: seconds to connect and for each request (a request that
            takes longer raises :class:`SegmenterError`).
        info: a :class:`ModelInfo` to use instead of the server's config
            parameters (for a repository written without them).
        model_version: a version folder, or ``""`` for the server's choice.

    Raises:
        SegmenterError: the server cannot be reached, the model is not
            there, or its configuration lacks what pre-processing needs.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        protocol: str = "http",
        timeout_s: float = 60.0,
        info: ModelInfo | None = None,
        model_version: str = "",
    ):
        if protocol not in ("http", "grpc"):
            raise SegmenterError(f"protocol {protocol!r} is not supported; use 'http' or 'grpc'")
        if not timeout_s > 0:
            raise SegmenterError(f"timeout_s {timeout_s!r} must be > 0 seconds")
        try:
            if protocol == "http":
                import tritonclient.http as tc
            else:
                import tritonclient.grpc as tc
        except ImportError as exc:
            raise SegmenterError(
                "the Triton client needs tritonclient: pip install 'tritonclient[http,grpc]' (the 'triton' extra)"
            ) from exc
        self._tc, self._grpc = tc, protocol == "grpc"
        self.url, self.model_name, self.model_version = url, model_name, model_version
        self.timeout_s = timeout_s
        if self._grpc:
            self._client = tc.InferenceServerClient(url=url)
        else:
            self._client = tc.InferenceServerClient(
                url=url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        try:
            self._configure(model_name, url, info)
        except BaseException:
            self._client.close()  # a refused model leaves no open connection behind
            raise

    def _configure(self, model_name: str, url: str, info: ModelInfo | None) -> None:
        """Read max_batch_size, tensor names and types and the model's metadata from the server."""
        config = self._config()
        self.max_batch_size = int(config.get("max_batch_size", 0)) or 1
        (inp,), (out,) = config["input"], config["output"]
        self.input_name, self.output_name = inp["name"], out["name"]
        try:
            wire = by_triton(inp["data_type"])
        except KeyError:
            wire = None
        if wire is None or wire.datatype not in _INPUT_TYPES:
            raise SegmenterError(
                f"{model_name!r} takes {inp['data_type']} input; a VGG19-UNet export takes "
                f"{' or '.join(_INPUT_TYPES)}"
            )
        self.input_datatype = wire.datatype
        if info is None:
            params = {
                k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()
            }
            try:
                info = ModelInfo.from_metadata(params)
            except ValueError as exc:
                raise SegmenterError(
                    f"{model_name!r}: its config parameters are malformed ({exc})"
                ) from exc
            if info is None:
                raise SegmenterError(
                    f"{model_name!r} on {url} has no {METADATA_PREFIX}* parameters in its configuration; re-export "
                    "the repository with export-unet --triton-repo, or pass info=ModelInfo(...)"
                )
        self.info = info
        self._pipeline = Pipeline(info, wire.numpy)

    def _config(self) -> dict:
        """The model configuration, as a dict (HTTP's JSON form; gRPC's protobuf converted)."""
        try:
            if self._grpc:
                from google.protobuf import json_format

                response = self._client.get_model_config(
                    self.model_name, self.model_version, client_timeout=self.timeout_s
                )
                return json_format.MessageToDict(response.config, preserving_proto_field_name=True)
            return self._client.get_model_config(self.model_name, self.model_version)
        except Exception as exc:  # InferenceServerException, transport errors
            raise SegmenterError(
                f"cannot read the configuration of {self.model_name!r} from {self.url}: {exc}"
            ) from exc

    def build_request(self, x: np.ndarray):
        """The InferInput/InferRequestedOutput pair for one model-ready batch (binary tensor data)."""
        tc = self._tc
        inp = tc.InferInput(self.input_name, list(x.shape), self.input_datatype)
        if self._grpc:
            inp.set_data_from_numpy(x)
            out = tc.InferRequestedOutput(self.output_name)
        else:
            inp.set_data_from_numpy(x, binary_data=True)
            out = tc.InferRequestedOutput(self.output_name, binary_data=True)
        return [inp], [out]

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's raw output for a prepared batch, sent in requests of at most ``max_batch_size``."""
        parts = []
        for start in range(0, len(x), self.max_batch_size):
            inputs, outputs = self.build_request(
                np.ascontiguousarray(x[start : start + self.max_batch_size])
            )
            timeout = {"client_timeout": self.timeout_s} if self._grpc else {}
            try:
                result = self._client.infer(
                    self.model_name,
                    inputs,
                    outputs=outputs,
                    model_version=self.model_version,
                    **timeout,
                )
            except Exception as exc:  # InferenceServerException, transport errors
                raise SegmenterError(
                    f"request to {self.model_name!r} on {self.url} failed: {exc}"
                ) from exc
            parts.append(result.as_numpy(self.output_name))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def predict(self, images: np.ndarray | Sequence[np.ndarray]):
        """Masks, exactly as :meth:`Segmenter.predict` (one image or a list)."""
        return self._pipeline.predict(images, self.run)

    def predict_proba(self, images):
        """Probabilities, exactly as :meth:`Segmenter.predict_proba`."""
        return self._pipeline.predict_proba(images, self.run)

    def predict_with_proba(self, images):
        """Masks and probabilities from one request, exactly as :meth:`Segmenter.predict_with_proba`."""
        return self._pipeline.predict_with_proba(images, self.run)

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def __enter__(self) -> "TritonSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
