"""``segment-unet serve``: an Open Inference Protocol (KServe v2) model server for an exported model.

Built on KServe's Python model server (package ``kserve``, Apache-2.0): its
data plane, its REST endpoints and its gRPC servicer handle the protocol
(binary tensors, health, metadata, errors). What this module adds is the
model, served the way Triton's ONNX Runtime backend serves ``model.onnx``:
the request carries the model-ready tensor, the response the model's raw
output (mask, probabilities or logits), batches up to ``max_batch_size``. And
the model configuration endpoint Triton offers (``GET
/v2/models/NAME/config``, gRPC ``ModelConfig``), with the same
``parameters`` the exported Triton repository writes into ``config.pbtxt``,
so :class:`~unet_runtime.triton_client.TritonSegmenter` pre- and
post-processes from either server without a copy of the model file.

Needs the ``serve`` extra (``pip install 'unet-onnx[serve]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import signal
import sys
from pathlib import Path

import numpy as np

from ._help import DefaultsHelpFormatter
from .errors import SegmenterError
from .providers import parse_providers

__all__ = ["serve", "main", "model_config", "DATATYPES"]

log = logging.getLogger(__name__)

#: numpy dtype -> Open Inference Protocol datatype, for this model's tensors.
DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.uint8): "UINT8",
}
_TRITON_TYPES = {"FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "UINT8": "TYPE_UINT8"}
#: What export-unet --triton-repo puts in config.pbtxt's parameters: the model's metadata keys.
CLIENT_PREFIX = "unet."


def _dims(shape) -> list[int]:
    """An ONNX Runtime shape without its batch dimension, symbolic dimensions as -1."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def model_config(name: str, segmenter, max_batch_size: int) -> dict:
    """The model configuration as Triton's ``/v2/models/NAME/config`` returns it (the JSON form of config.pbtxt)."""
    from .model_file import read_metadata

    inp, out = segmenter.input_spec, segmenter.output_spec
    params = {
        k: {"string_value": v}
        for k, v in read_metadata(segmenter.model_path).items()
        if k.startswith(CLIENT_PREFIX)
    }
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": inp.name,
                "data_type": _TRITON_TYPES[DATATYPES[np.dtype(inp.dtype)]],
                "dims": [str(d) for d in _dims(inp.shape)],
            }
        ],
        "output": [
            {
                "name": out.name,
                "data_type": _TRITON_TYPES[DATATYPES[np.dtype(out.dtype)]],
                "dims": [str(d) for d in _dims(out.shape)],
            }
        ],
        "parameters": params,
    }


def _build_model(name: str, segmenter, max_batch_size: int):
    """The KServe model: validates the request against the model's input, runs it, returns the raw output."""
    from kserve import Model
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferResponse

    inp, out = segmenter.input_spec, segmenter.output_spec
    in_type, out_type = DATATYPES[np.dtype(inp.dtype)], DATATYPES[np.dtype(out.dtype)]
    in_dims = _dims(inp.shape)

    class UnetModel(Model):
        def __init__(self):
            super().__init__(name)
            self.ready = True

        def get_input_types(self):
            return [{"name": inp.name, "datatype": in_type, "shape": [-1, *in_dims]}]

        def get_output_types(self):
            return [{"name": out.name, "datatype": out_type, "shape": [-1, *_dims(out.shape)]}]

        def _tensor(self, payload) -> np.ndarray:
            if len(payload.inputs) != 1 or payload.inputs[0].name != inp.name:
                raise InvalidInput(
                    f"expected one input named {inp.name!r}, got {[i.name for i in payload.inputs]}"
                )
            x = payload.inputs[0]
            if x.datatype != in_type:
                raise InvalidInput(
                    f"input {inp.name!r} has datatype {x.datatype}; this model takes {in_type}"
                )
            shape = list(x.shape)
            if len(shape) != 1 + len(in_dims) or any(
                want not in (-1, got) for want, got in zip(in_dims, shape[1:], strict=True)
            ):
                raise InvalidInput(
                    f"input {inp.name!r} has shape {shape}; this model takes [-1, {', '.join(map(str, in_dims))}] "
                    "(-1: any)"
                )
            if not 1 <= shape[0] <= max_batch_size:
                raise InvalidInput(
                    f"inference request batch-size must be <= {max_batch_size} for '{name}' "
                    f"(got {shape[0]}); split the request"
                )
            try:
                return np.ascontiguousarray(x.as_numpy().reshape(shape))
            except (ValueError, TypeError) as exc:  # wrong byte count, unparsable data
                raise InvalidInput(
                    f"input {inp.name!r}: the data does not hold {shape} {in_type} values ({exc})"
                ) from exc

        async def predict(self, payload, headers=None, response_headers=None):
            batch = self._tensor(payload)
            try:
                # ONNX Runtime releases the GIL while it runs: other requests are parsed meanwhile.
                result = await asyncio.to_thread(segmenter.run, batch)
            except SegmenterError as exc:
                raise InvalidInput(str(exc)) from exc
            result = np.ascontiguousarray(result)
            output = InferOutput(name=out.name, shape=list(result.shape), datatype=out_type)
            output.set_data_from_numpy(result, binary_data=True)
            return InferResponse(
                response_id=payload.id or "",
                model_name=name,
                infer_outputs=[output],
                use_binary_outputs=True,
            )

    return UnetModel()


#: Field numbers of Triton's model_config.proto and grpc_service.proto, for :func:`encode_model_config`.
_CONFIG_FIELDS = {
    "name": 1,
    "platform": 2,
    "max_batch_size": 4,
    "input": 5,
    "output": 6,
    "parameters": 14,
    "backend": 17,
}
_TENSOR_FIELDS = {
    "input": {"name": 1, "data_type": 2, "dims": 4},
    "output": {"name": 1, "data_type": 2, "dims": 3},
}
_DATA_TYPES = {"TYPE_UINT8": 2, "TYPE_FP16": 10, "TYPE_FP32": 11}


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf encodes them
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | int | str) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def encode_model_config(config: dict) -> bytes:
    """Triton's ``ModelConfigResponse`` (gRPC) for :func:`model_config`'s dict, in protobuf wire format.

    Written by hand because Triton's generated protos (tritonclient) and
    KServe's declare the same ``inference.*`` messages, and one process cannot
    load both into protobuf's default pool; the tests decode the bytes with
    tritonclient's ``ModelConfigResponse``.
    """
    body = _field(_CONFIG_FIELDS["name"], config["name"]) + _field(
        _CONFIG_FIELDS["platform"], config["platform"]
    )
    body += _field(_CONFIG_FIELDS["max_batch_size"], config["max_batch_size"])
    for kind in ("input", "output"):
        f = _TENSOR_FIELDS[kind]
        for t in config[kind]:
            dims = b"".join(_varint(int(d)) for d in t["dims"])
            tensor = (
                _field(f["name"], t["name"])
                + _field(f["data_type"], _DATA_TYPES[t["data_type"]])
                + _field(f["dims"], dims)
            )
            body += _field(_CONFIG_FIELDS[kind], tensor)
    for key, value in config["parameters"].items():
        # map entry: key, ModelParameter
        entry = _field(1, key) + _field(2, _field(1, value["string_value"]))
        body += _field(_CONFIG_FIELDS["parameters"], entry)
    body += _field(_CONFIG_FIELDS["backend"], config["backend"])
    return _field(1, body)  # ModelConfigResponse.config


def _config_grpc_handler(name: str, config: dict):
    """A gRPC handler for ``inference.GRPCInferenceService/ModelConfig`` (Triton's RPC; KServe's servicer lacks it)."""
    import grpc

    response = encode_model_config(config)

    def name_of(request: bytes) -> str:  # ModelConfigRequest: name = 1 (string), version = 2
        from .model_file import _fields

        return next(
            (bytes(v).decode() for f, w, v in _fields(memoryview(request)) if f == 1 and w == 2), ""
        )

    async def model_config_rpc(request: str, context):
        if request != name:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request}' is not found"
            )
        return response

    return grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelConfig": grpc.unary_unary_rpc_method_handler(
                model_config_rpc, request_deserializer=name_of, response_serializer=lambda b: b
            ),
        },
    )


async def _serve(
    model_path: Path,
    *,
    name: str,
    host: str,
    http_port: int,
    grpc_port: int,
    providers,
    max_batch_size: int,
    stop: asyncio.Event,
) -> None:
    import uvicorn
    from fastapi import HTTPException
    from grpc import aio
    from kserve.model_repository import ModelRepository
    from kserve.model_server import app
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    from .segmenter import Segmenter

    segmenter = Segmenter(model_path, providers=providers)
    config = model_config(name, segmenter, max_batch_size)
    repository = ModelRepository()
    repository.update(_build_model(name, segmenter, max_batch_size), name)
    dataplane, extension = (
        DataPlane(model_registry=repository),
        ModelRepositoryExtension(model_registry=repository),
    )

    # REST: KServe's endpoints, middlewares and error mapping on its application, Triton's config
    # route added.
    RESTServer("kserve.model_server:app", dataplane, extension, http_port).create_application()

    async def config_route(model_name: str):
        if model_name != name:
            raise HTTPException(
                status_code=404, detail=f"Model with name {model_name} does not exist."
            )
        return config

    app.add_api_route("/v2/models/{model_name}/config", config_route, methods=["GET"])
    http = uvicorn.Server(
        uvicorn.Config(app, host=host, port=http_port, log_config=None, timeout_graceful_shutdown=5)
    )
    # gRPC: KServe's servicer and the ModelConfig RPC on one server.
    grpc_server = aio.server(
        interceptors=(ExceptionToStatusInterceptor(),),
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, extension), grpc_server
    )
    grpc_server.add_generic_rpc_handlers((_config_grpc_handler(name, config),))
    if grpc_server.add_insecure_port(f"{host}:{grpc_port}") == 0:
        raise OSError(f"gRPC port {grpc_port} on {host} is not free")
    await grpc_server.start()
    log.info(
        "serving %s (%s) over HTTP %s:%d and gRPC %s:%d on %s",
        name,
        model_path,
        host,
        http_port,
        host,
        grpc_port,
        ", ".join(segmenter.providers),
    )
    http_task = asyncio.create_task(http.serve())
    stop_task = asyncio.create_task(stop.wait())
    # SIGTERM/SIGINT (uvicorn's handlers or ours): stop taking requests, let the running ones
    # finish, exit.
    await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    http.should_exit = True
    await grpc_server.stop(grace=5)
    await http_task
    stop_task.cancel()
    segmenter.close()
    if not http.started:
        raise OSError(f"HTTP port {http_port} on {host} could not be opened")


def serve(
    model_path,
    *,
    name: str = "vgg19_unet",
    host: str = "127.0.0.1",
    http_port: int = 8080,
    grpc_port: int = 8081,
    providers="auto",
    max_batch_size: int = 8,
) -> None:
    """Serve ``model_path`` until SIGTERM or SIGINT (see the module doc); returns once it has stopped."""

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve(
            Path(model_path),
            name=name,
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            providers=providers,
            max_batch_size=max_batch_size,
            stop=stop,
        )

    asyncio.run(run())


def build_parser(prog: str = "segment-unet serve") -> argparse.ArgumentParser:
    """The argument parser of ``segment-unet serve``."""
    p = argparse.ArgumentParser(
        prog=prog,
        formatter_class=DefaultsHelpFormatter,
        description="Serve an exported model over the Open Inference Protocol (KServe v2: REST "
        "and gRPC), as Triton serves it: model-ready tensors in, raw outputs out; "
        "TritonSegmenter is the client. Stops cleanly on SIGTERM.",
    )
    p.add_argument("model", type=Path, help="the .onnx model")
    p.add_argument(
        "--name", default="vgg19_unet", help="model name in the URLs (/v2/models/NAME/...)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (0.0.0.0: every interface, in a container)",
    )
    p.add_argument("--http-port", type=int, default=8080, help="REST port")
    p.add_argument("--grpc-port", type=int, default=8081, help="gRPC port")
    p.add_argument("--providers", default="auto", help="'auto' or a comma list: tensorrt,cuda,cpu")
    p.add_argument(
        "--max-batch-size", type=int, default=8, help="largest batch a request may carry"
    )
    return p


def main(argv: list[str] | None = None, prog: str = "segment-unet serve") -> int:
    """Entry point of ``segment-unet serve``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    problem = None
    if args.max_batch_size < 1:
        problem = f"--max-batch-size {args.max_batch_size} must be >= 1"
    elif args.http_port == args.grpc_port:
        problem = f"--http-port and --grpc-port are both {args.http_port}; give two ports"
    else:
        if importlib.util.find_spec("kserve") is None:
            problem = "serving needs kserve: pip install 'unet-onnx[serve]'"
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # a line per request and timer otherwise
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    providers = parse_providers(args.providers)
    try:
        serve(
            args.model,
            name=args.name,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            providers=providers,
            max_batch_size=args.max_batch_size,
        )
    except SegmenterError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a port in use
        print(
            f"{prog}: error: cannot listen ({exc.strerror or exc}); choose other ports",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
