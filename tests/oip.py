"""Open Inference Protocol helpers shared by the server tests: raw REST requests and a battery of malformed ones.

The battery is sent as bytes over HTTP (no client library in the way), so
both servers see exactly the same request.
"""

from __future__ import annotations

import http.client
import json
import math
from dataclasses import dataclass

from unet_runtime.wire import by_datatype


@dataclass(frozen=True)
class Tensor:
    """The served model's input as the battery needs it."""

    name: str
    datatype: str
    shape: list[int]  # a valid request's shape, batch first
    output: str
    max_batch_size: int


def post(address: str, path: str, body: bytes, headers: dict | None = None, timeout: float = 60):
    """POST ``body`` to ``http://address/path``; returns (status, body bytes)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(
            "POST", path, body=body, headers=headers or {"Content-Type": "application/json"}
        )
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _binary(t: Tensor, extra: int = 0, size: int | None = None, header_length=None):
    nbytes = math.prod(t.shape) * by_datatype(t.datatype).itemsize
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": t.name,
                    "shape": t.shape,
                    "datatype": t.datatype,
                    "parameters": {"binary_data_size": nbytes if size is None else size},
                }
            ],
            "outputs": [{"name": t.output, "parameters": {"binary_data": True}}],
        }
    ).encode()
    data = bytes(nbytes)
    body = header + (data + bytes(extra) if extra >= 0 else data[:extra])
    length = len(header) if header_length is None else header_length
    return body, {
        "Inference-Header-Content-Length": str(length),
        "Content-Type": "application/octet-stream",
    }


def _json(obj):
    return json.dumps(obj).encode(), None


def _input(t: Tensor, **changes):
    spec = {"name": t.name, "shape": t.shape, "datatype": t.datatype}
    spec["data"] = [0] * math.prod(changes.get("shape", t.shape))
    spec.update(changes)
    return spec


def valid_request(t: Tensor):
    """A well-formed binary request of zeros (the battery's control)."""
    return _binary(t)


def battery(t: Tensor) -> dict[str, tuple[bytes, dict | None]]:
    """Malformed requests, by what is wrong with each: lengths, headers, JSON, datatypes, shapes, names."""
    other_type = "UINT8" if t.datatype != "UINT8" else "FP32"
    wrong_dims = [t.shape[0], *(d + 16 if d > 0 else 16 for d in t.shape[1:])]
    return {
        "body 1000 bytes longer than its tensor": _binary(t, extra=1000),
        "body 100 bytes shorter than its tensor": _binary(t, extra=-100),
        "binary_data_size smaller than the tensor": _binary(t, size=100),
        "header length beyond the body": _binary(t, header_length=10**7),
        "header length not a number": _binary(t, header_length="abc"),
        "invalid JSON": (b'{"inputs": [', None),
        "JSON that is not an object": _json([1, 2]),
        "no inputs": _json({"outputs": []}),
        "wrong input name": _json({"inputs": [_input(t, name="image")]}),
        "wrong datatype": _json({"inputs": [_input(t, datatype=other_type)]}),
        "unknown datatype": _json({"inputs": [_input(t, datatype="FP99")]}),
        "wrong rank": _json({"inputs": [_input(t, shape=t.shape[:-1])]}),
        "wrong dims": _json({"inputs": [_input(t, shape=wrong_dims)]}),
        "batch over max_batch_size": _json(
            {"inputs": [_input(t, shape=[t.max_batch_size + 1, *t.shape[1:]])]}
        ),
        "too few values": _json({"inputs": [_input(t, data=[0] * 10)]}),
        "values that are strings": _json({"inputs": [_input(t, data=["a"] * math.prod(t.shape))]}),
        "a second input": _json(
            {
                "inputs": [
                    _input(t),
                    {"name": "extra", "shape": [1], "datatype": "FP32", "data": [0]},
                ]
            }
        ),
        "unknown output": _json({"inputs": [_input(t)], "outputs": [{"name": "nope"}]}),
        "negative dimension": _json(
            {"inputs": [_input(t, shape=[1, -t.shape[1], *t.shape[2:]], data=[0])]}
        ),
    }


def error_message(body: bytes) -> str:
    """The ``error`` of a JSON error body ('' if there is none)."""
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return ""
