"""The Open Inference Protocol's REST inference request, decoded and checked as Triton checks it.

``segment-unet serve`` answers every malformed request the way Triton
Inference Server 2.51 does: a 4xx status and a message naming the problem
(Triton answers a few JSON parse errors with 500; this server says 400 for
those too, since the fault is the request's). The request format is the
protocol's (KServe ``docs/predict-api/v2/required_api.md``) with Triton's
binary tensor extension (triton-inference-server/server
``docs/protocol/extension_binary_data.md``): a JSON header of
``Inference-Header-Content-Length`` bytes, then each input's raw bytes in the
order of the header's inputs.

The messages follow Triton's (``src/http_server.cc``, ``src/core`` request
validation at r24.10) where Triton has one, so a client that matches on them
works against both servers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .wire import WireType

__all__ = ["Contract", "ProtocolError", "DecodedRequest", "decode_request", "encode_response"]


class ProtocolError(Exception):
    """A request the server refuses: ``status`` (4xx) and the message the client gets."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Contract:
    """What one served model accepts: its name, input and output, and the largest batch."""

    model: str
    input_name: str
    input_type: WireType
    #: input dims without the batch dimension, -1 where any size is allowed
    input_dims: tuple[int, ...]
    output_name: str
    output_type: WireType
    output_dims: tuple[int, ...]
    max_batch_size: int

    def check_input(self, name: str, datatype: str, shape) -> int:
        """Check one input's name, datatype and shape; returns its byte count, or raises ProtocolError."""
        m = self.model
        if name != self.input_name:
            raise ProtocolError(f"unexpected inference input '{name}' for model '{m}'")
        if datatype != self.input_type.datatype:
            raise ProtocolError(
                f"inference input '{name}' data-type is '{datatype}', but model '{m}' expects "
                f"'{self.input_type.datatype}'"
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise ProtocolError(f"input '{name}': shape {shape!r} is not a list of integers")
        want = [-1, *self.input_dims]
        if len(shape) != len(want) or any(
            d < 1 or w not in (-1, d) for w, d in zip(want, shape, strict=True)
        ):
            raise ProtocolError(
                f"unexpected shape for input '{name}' for model '{m}'. Expected "
                f"[{','.join(map(str, want))}], got [{','.join(map(str, shape))}] "
                "(every dimension >= 1; the first is the batch)"
            )
        if shape[0] > self.max_batch_size:
            raise ProtocolError(
                f"inference request batch-size must be <= {self.max_batch_size} for '{m}' "
                f"(got {shape[0]}); split the request"
            )
        return math.prod(shape) * self.input_type.itemsize


@dataclass(frozen=True)
class DecodedRequest:
    """A checked request: the input batch, whether the output goes back as binary data, the request id."""

    batch: np.ndarray
    binary_output: bool
    request_id: str


def _header_length(value: str | None, body_size: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ProtocolError(
            f"Inference-Header-Content-Length {value!r} is not an integer; send the JSON "
            "header's byte count"
        ) from None
    if not 0 < n <= body_size:
        raise ProtocolError(f"inference header size should be in range (0, {body_size}], got: {n}")
    return n


def _parse_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(
            f"the request must be a JSON object with 'inputs', not {type(header).__name__}"
        )
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("Unable to parse 'inputs': the request needs a non-empty list 'inputs'")
    return header


def _outputs_binary(header: dict, contract: Contract) -> bool:
    params = header.get("parameters") or {}
    binary = bool(isinstance(params, dict) and params.get("binary_data_output", False))
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise ProtocolError("Unable to parse 'outputs': it must be a list")
    for out in outputs:
        name = out.get("name") if isinstance(out, dict) else None
        if name != contract.output_name:
            raise ProtocolError(
                f"unexpected inference output '{name}' for model '{contract.model}'"
            )
        binary = bool((out.get("parameters") or {}).get("binary_data", binary))
    return binary


def decode_request(contract: Contract, body: bytes, header_length: str | None) -> DecodedRequest:
    """One REST inference request's body (and its ``Inference-Header-Content-Length``), checked.

    Raises ProtocolError for anything Triton refuses, and for data of the
    wrong size either way: bytes missing, or bytes left over after the last
    input (a silent truncation would run the model on something the client
    did not mean).
    """
    n = _header_length(header_length, len(body))
    header = _parse_header(body if n is None else body[:n])
    binary = memoryview(body)[len(body) if n is None else n :]
    m = contract.model
    if len(header["inputs"]) != 1:
        names = [i.get("name") if isinstance(i, dict) else i for i in header["inputs"]]
        raise ProtocolError(
            f"expected 1 inputs but got {len(names)} inputs for model '{m}'. Got input(s) "
            f"{names}; send only '{contract.input_name}'"
        )
    (spec,) = header["inputs"]
    if not isinstance(spec, dict):
        raise ProtocolError("Unable to parse 'inputs': each input must be a JSON object")
    name, datatype, shape = str(spec.get("name")), str(spec.get("datatype")), spec.get("shape")
    nbytes = contract.check_input(name, datatype, shape)  # raises unless shape is a list of ints
    assert isinstance(shape, list)
    params = spec.get("parameters") or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size < 0:
            raise ProtocolError(f"input '{name}': binary_data_size {size!r} is not a byte count")
        if size > len(binary):
            raise ProtocolError(
                f"unexpected size for input '{name}', expecting {size - len(binary)} additional "
                f"bytes for model '{m}'"
            )
        if size != nbytes:
            raise ProtocolError(
                f"input byte size mismatch for input '{name}' for model '{m}'. Expected {nbytes}, "
                f"got {size}"
            )
        if len(binary) != size:
            raise ProtocolError(f"unexpected additional input data for model '{m}'")
        batch = np.frombuffer(binary, dtype=contract.input_type.numpy).reshape(shape)
    else:
        if len(binary):
            raise ProtocolError(f"unexpected additional input data for model '{m}'")
        batch = _json_data(spec.get("data"), name, shape, contract.input_type)
    return DecodedRequest(batch, _outputs_binary(header, contract), str(header.get("id", "")))


def _json_data(data, name: str, shape: list[int], wire: WireType) -> np.ndarray:
    if data is None:
        raise ProtocolError(f"input '{name}' has neither 'data' nor binary_data_size")
    try:
        flat = np.asarray(data, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError):
        raise ProtocolError(
            f"Unable to parse 'data' of input '{name}': {wire.datatype} takes numbers"
        ) from None
    if flat.size != math.prod(shape):
        raise ProtocolError(
            f"Unable to parse 'data' of input '{name}': {flat.size} values for shape {shape} "
            f"({math.prod(shape)} values)"
        )
    return flat.astype(wire.numpy).reshape(shape)


def encode_response(
    contract: Contract, result: np.ndarray, request: DecodedRequest
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: binary output data after the JSON header, or JSON data."""
    out: dict = {
        "name": contract.output_name,
        "datatype": contract.output_type.datatype,
        "shape": list(result.shape),
    }
    head = {"id": request.request_id, "model_name": contract.model, "model_version": "1"}
    if not request.binary_output:
        out["data"] = result.reshape(-1).tolist()
        return json.dumps({**head, "outputs": [out]}).encode(), {"content-type": "application/json"}
    raw = np.ascontiguousarray(result).tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({**head, "outputs": [out]}).encode()
    return header + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
