"""``segment-unet serve``: an Open Inference Protocol (KServe v2) model server for an exported model.

Served the way Triton's ONNX Runtime backend serves ``model.onnx``: the
request carries the model-ready tensor, the response the model's raw output
(mask, probabilities or logits); requests that wait while the model runs are
batched together up to ``max_batch_size`` (:class:`Batcher`). REST is this
module's own Starlette app, with requests decoded and checked by
:mod:`unet_runtime.protocol` as Triton checks them; gRPC is KServe's servicer
(package ``kserve``, Apache-2.0) around the same model and checks. Both also
answer Triton's model configuration (``GET /v2/models/NAME/config``, gRPC
``ModelConfig``), with the ``parameters`` the exported repository writes into
``config.pbtxt``, so :class:`~unet_runtime.triton_client.TritonSegmenter`
pre- and post-processes from either server without a copy of the model file.

Needs the ``serve`` extra (kserve: ``pip install ".[serve]"`` in a clone).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import signal
import sys
from collections import Counter, deque
from pathlib import Path

import numpy as np

from .errors import SegmenterError
from .helpformat import DefaultsHelpFormatter
from .protocol import Contract, ProtocolError, decode_request, encode_response
from .providers import parse_providers
from .wire import METADATA_PREFIX, by_numpy

__all__ = ["serve", "main", "model_config", "contract_of"]

log = logging.getLogger(__name__)


def _dims(shape) -> list[int]:
    """An ONNX Runtime shape without its batch dimension, symbolic dimensions as -1."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def contract_of(name: str, segmenter, max_batch_size: int) -> Contract:
    """What the served model accepts, read from its session (names, types, dims)."""
    inp, out = segmenter.engine.input_spec, segmenter.engine.output_spec
    return Contract(
        model=name,
        input_name=inp.name,
        input_type=by_numpy(inp.dtype),
        input_dims=tuple(_dims(inp.shape)),
        output_name=out.name,
        output_type=by_numpy(out.dtype),
        output_dims=tuple(_dims(out.shape)),
        max_batch_size=max_batch_size,
    )


def model_config(c: Contract, model_path: Path) -> dict:
    """The model configuration as Triton's ``/v2/models/NAME/config`` returns it (the JSON form of config.pbtxt)."""
    from .model_file import read_metadata

    params = {
        k: {"string_value": v}
        for k, v in read_metadata(model_path).items()
        if k.startswith(METADATA_PREFIX)
    }
    return {
        "name": c.model,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": c.max_batch_size,
        "input": [
            {
                "name": c.input_name,
                "data_type": c.input_type.triton,
                "dims": [str(d) for d in c.input_dims],
            }
        ],
        "output": [
            {
                "name": c.output_name,
                "data_type": c.output_type.triton,
                "dims": [str(d) for d in c.output_dims],
            }
        ],
        "parameters": params,
    }


def model_metadata(contract: Contract) -> dict:
    """``GET /v2/models/NAME``: the protocol's model metadata (Triton's answer for an ONNX model)."""
    c = contract
    return {
        "name": c.model,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": c.input_name, "datatype": c.input_type.datatype, "shape": [-1, *c.input_dims]}
        ],
        "outputs": [
            {
                "name": c.output_name,
                "datatype": c.output_type.datatype,
                "shape": [-1, *c.output_dims],
            }
        ],
    }


class Batcher:
    """Runs the model one batch at a time, putting together the requests that wait meanwhile.

    Like Triton's dynamic batcher with no queue delay: a request that arrives
    while the model runs waits for it, and then runs with every other waiting
    request of the same image shape, up to ``max_batch_size`` images. One run
    at a time also keeps concurrent requests from splitting the CPU's cores
    between two sessions (measured slower than one at a time in
    benchmarks/results/serve-cpu.md).
    """

    def __init__(self, run, max_batch_size: int):
        self._run, self._max = run, max_batch_size
        self._pending: deque = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        #: images per model run, as they formed (for the statistics and the tests)
        self.batch_sizes: Counter = Counter()

    async def submit(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for ``batch``, run alone or with other waiting requests."""
        if self._worker is None:
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work())
        done = asyncio.get_running_loop().create_future()
        self._pending.append((batch, done))
        assert self._wake is not None
        self._wake.set()
        return await done

    def _take(self) -> list:
        first = self._pending.popleft()
        group, images = [first], len(first[0])
        while self._pending:
            batch = self._pending[0][0]
            if batch.shape[1:] != first[0].shape[1:] or images + len(batch) > self._max:
                break
            group.append(self._pending.popleft())
            images += len(batch)
        return group

    async def _work(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group = [(b, f) for b, f in self._take() if not f.done()]  # cancelled: dropped
                if not group:
                    continue
                x = group[0][0] if len(group) == 1 else np.concatenate([b for b, _ in group])
                self.batch_sizes[len(x)] += 1
                try:
                    # ONNX Runtime releases the GIL while it runs: requests are parsed meanwhile.
                    out = await asyncio.to_thread(self._run, x)
                except Exception as exc:  # the same error for every request of the group
                    for _, f in group:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                start = 0
                for b, f in group:
                    if not f.done():
                        f.set_result(out[start : start + len(b)])
                    start += len(b)

    async def close(self) -> None:
        """Stop the worker (requests still waiting get CancelledError)."""
        if self._worker is not None:
            self._worker.cancel()
            for _, f in self._pending:
                f.cancel()


def _build_model(contract: Contract, batcher: Batcher):
    """The KServe model behind the gRPC endpoint: the request checked as over REST, run, raw output back."""
    from kserve import Model
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferResponse

    c = contract

    class UnetModel(Model):
        def __init__(self):
            super().__init__(c.model)
            self.ready = True

        def get_input_types(self):  # gRPC ModelMetadata (perf_analyzer reads it)
            return [model_metadata(c)["inputs"][0]]

        def get_output_types(self):
            return [model_metadata(c)["outputs"][0]]

        def _tensor(self, payload) -> np.ndarray:
            if len(payload.inputs) != 1:
                raise InvalidInput(
                    f"expected 1 inputs but got {len(payload.inputs)} inputs for model "
                    f"'{c.model}'; send only '{c.input_name}'"
                )
            x = payload.inputs[0]
            try:
                nbytes = c.check_input(x.name, x.datatype, list(x.shape))
            except ProtocolError as exc:
                raise InvalidInput(str(exc)) from exc
            try:
                values = x.as_numpy()
            except (ValueError, TypeError) as exc:  # a byte count no whole number of values fills
                raise InvalidInput(
                    f"input '{x.name}': the data does not hold {list(x.shape)} "
                    f"{c.input_type.datatype} values ({exc})"
                ) from exc
            if values.nbytes != nbytes:  # refused, never truncated or padded
                raise InvalidInput(
                    f"input byte size mismatch for input '{x.name}' for model '{c.model}'. "
                    f"Expected {nbytes}, got {values.nbytes}"
                )
            return np.ascontiguousarray(values.reshape(x.shape))

        async def predict(self, payload, headers=None, response_headers=None):
            for out in payload.request_outputs or ():
                if out.name != c.output_name:
                    raise InvalidInput(
                        f"unexpected inference output '{out.name}' for model '{c.model}'"
                    )
            batch = self._tensor(payload)
            try:
                result = await batcher.submit(batch)
            except SegmenterError as exc:
                raise InvalidInput(str(exc)) from exc
            result = np.ascontiguousarray(result)
            output = InferOutput(
                name=c.output_name, shape=list(result.shape), datatype=c.output_type.datatype
            )
            output.set_data_from_numpy(result, binary_data=True)
            return InferResponse(
                response_id=payload.id or "",
                model_name=c.model,
                infer_outputs=[output],
                use_binary_outputs=True,
            )

    return UnetModel()


class _RestApi:
    """The REST endpoints (Starlette): health, metadata, Triton's config and statistics routes, inference.

    Inference is decoded here rather than by KServe's REST layer, which
    accepted a body longer than its tensor (the extra bytes ignored) and
    answered a short one with 500; :mod:`.protocol` refuses both as Triton does.
    """

    def __init__(self, contract: Contract, config: dict, batcher: Batcher):
        self.contract, self.config, self.batcher = contract, config, batcher

    @staticmethod
    def error(message: str, status: int = 400):
        from starlette.responses import JSONResponse

        return JSONResponse({"error": message}, status_code=status)

    def app(self):
        """The Starlette application, every route under ``/v2`` and its versioned form."""
        from starlette.applications import Starlette
        from starlette.routing import Route

        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.live),
            Route("/v2", self.server_metadata),
        ]
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route(prefix, self._model(self.metadata)),
                Route(prefix + "/ready", self._model(self.live)),
                Route(prefix + "/config", self._model(self.model_config)),
                Route(prefix + "/stats", self._model(self.statistics)),
                Route(prefix + "/infer", self._model(self.infer), methods=["POST"]),
            ]

        async def not_found(request, exc):
            return self.error(f"Not Found: {request.method} {request.url.path}", exc.status_code)

        return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})

    def _model(self, handler):
        """``handler`` for this model only (any other name or version: Triton's 404)."""

        async def route(request):
            model = request.path_params["model"]
            version = request.path_params.get("version", "1")
            if model != self.contract.model or version not in ("", "1"):
                what = model if version in ("", "1") else f"{model}' version '{version}"
                return self.error(f"Request for unknown model: '{what}' is not found", 404)
            return await handler(request)

        return route

    async def live(self, request):
        from starlette.responses import Response

        return Response(status_code=200)

    async def server_metadata(self, request):
        from starlette.responses import JSONResponse

        from . import __version__

        return JSONResponse({"name": "segment-unet", "version": __version__, "extensions": []})

    async def metadata(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse(model_metadata(self.contract))

    async def model_config(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse(self.config)

    async def statistics(self, request):
        """The subset of Triton's statistics extension a load test reads: runs per batch size."""
        from starlette.responses import JSONResponse

        sizes = sorted(self.batcher.batch_sizes.items())
        stats = {
            "name": self.contract.model,
            "version": "1",
            "inference_count": sum(b * n for b, n in sizes),
            "execution_count": sum(n for _, n in sizes),
            "batch_stats": [{"batch_size": b, "compute_infer": {"count": n}} for b, n in sizes],
        }
        return JSONResponse({"model_stats": [stats]})

    async def infer(self, request):
        from starlette.responses import Response

        body = await request.body()
        try:
            decoded = decode_request(
                self.contract, body, request.headers.get("inference-header-content-length")
            )
        except ProtocolError as exc:
            return self.error(str(exc), exc.status)
        try:
            result = await self.batcher.submit(decoded.batch)
        except SegmenterError as exc:
            return self.error(str(exc))
        payload, headers = encode_response(self.contract, result, decoded)
        return Response(payload, headers=headers)


def encode_model_config(config: dict) -> bytes:
    """Triton's ``ModelConfigResponse`` (gRPC) for :func:`model_config`'s dict, serialized.

    Built with classes generated from ``protos/unet_model_config.proto``, the part
    of Triton's model configuration this server sends, under its own package
    name: Triton's generated protos (tritonclient) and KServe's declare the same
    ``inference.*`` messages, and one process cannot load both into protobuf's
    default pool. The field numbers are Triton's, so the bytes decode with its
    protos (the tests decode them with tritonclient's ``ModelConfigResponse``).
    """
    from google.protobuf import json_format

    from .protos import unet_model_config_pb2 as pb

    message = json_format.ParseDict(config, pb.ModelConfig())
    return pb.ModelConfigResponse(config=message).SerializeToString()


def _config_grpc_handler(name: str, config: dict):
    """A gRPC handler for ``inference.GRPCInferenceService/ModelConfig`` (Triton's RPC; KServe's servicer lacks it)."""
    import grpc

    from .protos import unet_model_config_pb2 as pb

    response = encode_model_config(config)

    async def model_config_rpc(request, context):
        if request.name != name:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Request for unknown model: '{request.name}' is not found",
            )
        return response

    return grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelConfig": grpc.unary_unary_rpc_method_handler(
                model_config_rpc,
                request_deserializer=pb.ModelConfigRequest.FromString,
                response_serializer=lambda b: b,
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
    from grpc import aio
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension

    from .segmenter import Segmenter

    segmenter = Segmenter(model_path, providers=providers)
    contract = contract_of(name, segmenter, max_batch_size)
    config = model_config(contract, segmenter.model_path)
    batcher = Batcher(segmenter.engine.run, max_batch_size)
    http = uvicorn.Server(
        uvicorn.Config(
            _RestApi(contract, config, batcher).app(),
            host=host,
            port=http_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    )
    # gRPC: KServe's servicer (its data plane around our model) and Triton's ModelConfig RPC.
    repository = ModelRepository()
    repository.update(_build_model(contract, batcher), name)
    grpc_server = aio.server(
        interceptors=(ExceptionToStatusInterceptor(),),
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(
            DataPlane(model_registry=repository),
            ModelRepositoryExtension(model_registry=repository),
        ),
        grpc_server,
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
    await batcher.close()
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
            problem = "serving needs kserve: pip install 'kserve>=0.21,<0.23' (the 'serve' extra)"
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
