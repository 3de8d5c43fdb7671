"""Deployment: the Triton repository against the backend's own rules, and the client against a real server.

Config files are parsed with Triton's own protobuf (tritonclient's
model_config_pb2) and every key is checked against the table of keys the
ONNX Runtime backend and ONNX Runtime accept (unet_export.triton.CONFIG_KEYS).
No Triton runs here: the client is tested against ``segment-unet serve``,
KServe's Open Inference Protocol server, over HTTP and gRPC.
"""

import concurrent.futures
import json
import signal
import time
import urllib.error
import urllib.request

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2

from tests.conftest import NARROW, NUM_CLASSES, run_cli
from unet_bench.serve_load import start_server
from unet_export import ConfigError, ExportConfig, export_model
from unet_export.triton import CONFIG_KEYS, TritonOptions, config_keys, render_config
from unet_export.verify import FP32_REL_L2
from unet_runtime import ModelInfo, Segmenter, SegmenterError
from unet_runtime.triton_client import TritonSegmenter

TYPES = {"TYPE_FP32": onnx.TensorProto.FLOAT, "TYPE_UINT8": onnx.TensorProto.UINT8}


def _config(text: str):
    # unknown fields or bad enums raise here
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def repo(tmp_path_factory, confident_weights):
    """An exported repository: fp32, NCHW, softmax, max batch 4, default options."""
    root = tmp_path_factory.mktemp("repo")
    cfg = ExportConfig(
        input_size=(32, 32),
        num_classes=NUM_CLASSES,
        width_multiplier=NARROW,
        layout="nchw",
        weights=str(confident_weights),
    )
    res = export_model(cfg, None, triton=TritonOptions(repo=root, max_batch_size=4))
    return root / "vgg19_unet", res


def test_repository_matches_the_model_and_the_backends_rules(repo):
    folder, result = repo
    cfg = _config((folder / "config.pbtxt").read_text())
    model = onnx.load(str(folder / "1" / "model.onnx"))
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 4 and cfg.name == "vgg19_unet"
    for cfg_io, onnx_io in (
        (cfg.input[0], model.graph.input[0]),
        (cfg.output[0], model.graph.output[0]),
    ):
        t = onnx_io.type.tensor_type
        assert cfg_io.name == onnx_io.name
        assert TYPES[model_config_pb2.DataType.Name(cfg_io.data_type)] == t.elem_type
        assert list(cfg_io.dims) == [d.dim_value or -1 for d in t.shape.dim][1:]
    # No preferred sizes unless asked (Triton's batcher guide): the batcher forms any batch up to
    # the max.
    assert cfg.HasField("dynamic_batching") and not cfg.dynamic_batching.preferred_batch_size
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    # an fp32 export is served in fp32
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP32"
    assert (
        acc.parameters["trt_engine_cache_path"]
        == acc.parameters["trt_timing_cache_path"]
        == "/trt_cache"
    )
    assert acc.parameters["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert (
        acc.parameters["trt_profile_opt_shapes"]
        == acc.parameters["trt_profile_max_shapes"]
        == "input:4x3x32x32"
    )
    assert [w.batch_size for w in cfg.model_warmup] == [1, 4]
    # What pre-processing needs travels in the config: the model's own metadata, parsed back.
    params = {k: v.string_value for k, v in cfg.parameters.items() if k.startswith("unet.")}
    info = ModelInfo.from_metadata(params)
    assert info == Segmenter(folder / "1" / "model.onnx", providers="cpu").info
    # The export verified every batch Triton may send.
    assert max(c["batch"] for c in result.report["verification"]["cases"]) == 4


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_config_uses_only_keys_the_backend_and_ort_accept(precision, narrow_export, tmp_path):
    """max_batch_size 1, 4, 8 with every accelerator the precision allows, fixed and size-agnostic."""
    for dynamic in (False, True):
        extra = {"calibration_count": 8} if precision == "int8" else {}
        model = onnx.load(
            str(narrow_export(precision=precision, dynamic_size=dynamic, **extra).path)
        )
        allowed = {
            "fp32": ("auto", "tensorrt", "cuda", "cpu"),
            "fp16": ("auto", "tensorrt", "cuda"),
            "int8": ("auto", "cpu"),
        }[precision]
        for accelerator in allowed:
            for batch in (1, 4, 8):
                opts = TritonOptions(repo=tmp_path, accelerator=accelerator, max_batch_size=batch)
                opts.validate(32, precision)
                text = render_config(model, opts, precision)
                cfg = _config(text)
                for where, keys in config_keys(text).items():
                    table = CONFIG_KEYS["model"] if where == "model" else CONFIG_KEYS[where]
                    unknown = [
                        k
                        for k in keys
                        if k not in table and not (where == "model" and k.startswith("unet."))
                    ]
                    assert not unknown, (precision, accelerator, where, unknown)
                kind = model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind)
                resolved = opts.resolved(precision).accelerator
                assert kind == ("KIND_CPU" if resolved == "cpu" else "KIND_GPU")
                if resolved == "tensorrt":
                    params = cfg.optimization.execution_accelerators.gpu_execution_accelerator[
                        0
                    ].parameters
                    assert params["precision_mode"] == {"fp16": "FP16"}.get(precision, "FP32")
                    if dynamic:  # the size range of a size-agnostic export is in the profile too
                        assert params["trt_profile_min_shapes"] == "input:1x16x16x3"
                        assert params["trt_profile_max_shapes"] == f"input:{batch}x1024x1024x3"
                assert [w.batch_size for w in cfg.model_warmup] == sorted({1, batch})


def test_combinations_that_make_no_sense_are_refused(tmp_path):
    for precision, accelerator, message in [
        ("int8", "tensorrt", "--accelerator tensorrt with --precision int8.*Use --accelerator cpu"),
        ("int8", "cuda", "--accelerator cuda with --precision int8"),
        ("fp16", "cpu", "--accelerator cpu with --precision fp16.*use --precision fp32 or int8"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TritonOptions(repo=tmp_path, accelerator=accelerator).validate(32, precision)
    assert TritonOptions(repo=tmp_path).resolved("int8").accelerator == "cpu"
    with pytest.raises(ConfigError, match="--trt-cache-dir 'cache' must be an absolute folder"):
        TritonOptions(repo=tmp_path, trt_cache_dir="cache").validate(32)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_max_batch_size_4_with_the_default_flags(tmp_path, precision):
    """A default never contradicts another flag: --max-batch-size 4 alone used to fail on preferred sizes [4, 8]."""
    from unet_export.cli import build_parser, triton_options

    args = build_parser().parse_args(
        ["--triton-repo", str(tmp_path / "r"), "--max-batch-size", "4", "--precision", precision]
    )
    opts = triton_options(args)
    opts.validate(32, precision)  # raises on any contradiction
    assert opts.max_batch_size == 4 and opts.preferred_batch_sizes == ()


def test_every_batch_up_to_max_runs(repo):
    folder, _ = repo
    session = ort.InferenceSession(
        str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for batch in range(1, 5):
        out = session.run(
            None, {"input": np.random.default_rng(batch).random((batch, 3, 32, 32), np.float32)}
        )[0]
        assert out.shape == (batch, NUM_CLASSES, 32, 32)


def test_onnx_test_data_round_trips(repo):
    folder, _ = repo
    data = folder / "1" / "test_data_set_0"
    x = numpy_helper.to_array(onnx.load_tensor(str(data / "input_0.pb")))
    want = numpy_helper.to_array(onnx.load_tensor(str(data / "output_0.pb")))
    got = ort.InferenceSession(
        str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    ).run(None, {"input": x})[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= FP32_REL_L2


def test_bad_triton_options(tmp_path, confident_weights):
    cfg = ExportConfig(
        input_size=(32, 32),
        num_classes=NUM_CLASSES,
        width_multiplier=NARROW,
        weights=str(confident_weights),
    )
    with pytest.raises(ConfigError, match="--max-batch-size 0 must be >= 1"):
        export_model(cfg, None, triton=TritonOptions(repo=tmp_path / "r", max_batch_size=0))
    with pytest.raises(ConfigError, match="larger than the largest batch the export verifies"):
        export_model(cfg, None, triton=TritonOptions(repo=tmp_path / "r", max_batch_size=64))
    with pytest.raises(ConfigError, match="--accelerator 'tpu'"):
        export_model(cfg, None, triton=TritonOptions(repo=tmp_path / "r", accelerator="tpu"))
    with pytest.raises(
        ConfigError, match=r"--preferred-batch-sizes \[8\] must lie in 1..--max-batch-size \(4\)"
    ):
        export_model(
            cfg,
            None,
            triton=TritonOptions(repo=tmp_path / "r", max_batch_size=4, preferred_batch_sizes=(8,)),
        )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "other_model").mkdir()
    (busy / "keep.txt").write_text("unrelated")
    with pytest.raises(ConfigError, match="not empty.*--force"):
        export_model(cfg, None, triton=TritonOptions(repo=busy, max_batch_size=2))
    export_model(
        cfg,
        None,
        triton=TritonOptions(repo=busy, max_batch_size=2, preferred_batch_sizes=(2,), force=True),
    )
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt", "other_model", "vgg19_unet"]
    assert (busy / "keep.txt").read_text() == "unrelated"
    assert "preferred_batch_size: [ 2 ]" in (busy / "vgg19_unet" / "config.pbtxt").read_text()


def test_grpc_model_config_encoding_is_tritons():
    """The server's hand-written ModelConfigResponse decodes with Triton's own protobuf, field for field."""
    from tritonclient.grpc import service_pb2

    from unet_runtime.serve import encode_model_config

    config = {
        "name": "m",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 4,
        "input": [{"name": "input", "data_type": "TYPE_UINT8", "dims": ["-1", "-1", "3"]}],
        "output": [{"name": "mask", "data_type": "TYPE_UINT8", "dims": ["-1", "-1"]}],
        "parameters": {
            "unet.head": {"string_value": '"argmax"'},
            "unet.mean": {"string_value": "[0, 0, 0]"},
        },
    }
    decoded = service_pb2.ModelConfigResponse.FromString(encode_model_config(config)).config
    assert (decoded.name, decoded.platform, decoded.backend, decoded.max_batch_size) == (
        "m",
        "onnxruntime_onnx",
        "onnxruntime",
        4,
    )
    assert (
        list(decoded.input[0].dims) == [-1, -1, 3]
        and decoded.input[0].data_type == model_config_pb2.TYPE_UINT8
    )
    assert decoded.output[0].name == "mask" and list(decoded.output[0].dims) == [-1, -1]
    assert {k: v.string_value for k, v in decoded.parameters.items()} == {
        "unet.head": '"argmax"',
        "unet.mean": "[0, 0, 0]",
    }


# ------------------------------------------------------------------ a real server
@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """``segment-unet serve`` on the repository's model (loopback, free ports, max batch 4), until the module ends."""
    folder, _ = repo
    log = tmp_path_factory.mktemp("server") / "log"
    proc, urls = start_server(folder / "1" / "model.onnx", 4, "cpu", log, timeout_s=90)
    yield {
        **urls,
        "proc": proc,
        "log": log,
        "model": folder / "1" / "model.onnx",
    }
    if proc.poll() is None:
        proc.kill()


def _images(seed, sizes):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in sizes]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_against_the_server_equals_local(server, protocol):
    """Mixed sizes and more images than max_batch_size (split by the client), no model file on the client side."""
    imgs = _images(
        0, [(32, 32), (50, 40), (32, 32), (17, 61), (32, 32), (32, 32), (32, 32), (40, 32)]
    )
    with TritonSegmenter(server[protocol], "vgg19_unet", protocol=protocol, timeout_s=30) as client:
        assert client.max_batch_size == 4 and client.info.layout == "nchw"
        remote = client.predict(imgs)
        remote_pairs = client.predict_with_proba(imgs[:3])
    with Segmenter(server["model"], providers="cpu") as seg:
        local = seg.predict(imgs)
        local_pairs = seg.predict_with_proba(imgs[:3])
    for r, lo in zip(remote, local, strict=True):
        np.testing.assert_array_equal(r, lo)
    for (rm, rp), (lm, lp) in zip(remote_pairs, local_pairs, strict=True):
        np.testing.assert_array_equal(rm, lm)
        # the built-in server runs the same ONNX Runtime in process: measured equal to the bit
        np.testing.assert_array_equal(rp, lp)


def test_load_8_clients_x_50_requests(server):
    """Concurrent clients (half HTTP, half gRPC): no error, every mask equal to the local one; latencies printed."""
    imgs = _images(1, [(32, 32)] * 8)
    with Segmenter(server["model"], providers="cpu") as seg:
        expected = seg.predict(imgs)

    def client(i):
        protocol = "http" if i % 2 else "grpc"
        times = []
        with TritonSegmenter(server[protocol], "vgg19_unet", protocol=protocol, timeout_s=60) as c:
            for k in range(50):
                t0 = time.perf_counter()
                mask = c.predict(imgs[(i + k) % 8])
                times.append(time.perf_counter() - t0)
                np.testing.assert_array_equal(mask, expected[(i + k) % 8])
        return times

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        latencies = np.concatenate(list(pool.map(client, range(8))))
    assert len(latencies) == 400
    print(
        f"\n400 requests from 8 clients: p50 {np.percentile(latencies, 50) * 1e3:.1f} ms, "
        f"p99 {np.percentile(latencies, 99) * 1e3:.1f} ms"
    )


def _post(url: str, body: bytes, headers=None):
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_bad_requests_get_protocol_errors_and_the_server_keeps_serving(server):
    base = f"http://{server['http']}/v2/models"

    def request(shape, datatype="FP32", name="input", data=None):
        n = int(np.prod(shape))
        return json.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "shape": shape,
                        "datatype": datatype,
                        "data": data if data is not None else [0.0] * n,
                    }
                ]
            }
        ).encode()

    status, body = _post(f"{base}/nope/infer", request([1, 3, 32, 32]))
    assert status == 404, body
    for payload, message in [
        (
            request([1, 3, 32, 32], datatype="UINT8", data=[0] * 3072),
            b"data-type is 'UINT8', but model 'vgg19_unet' expects 'FP32'",
        ),
        (request([1, 3, 16, 32]), b"got [1,3,16,32]"),
        (request([5, 3, 32, 32]), b"batch-size must be <= 4"),
        (request([1, 3, 32, 32], name="image"), b"unexpected inference input 'image'"),
        (request([1, 3, 32, 32], data=[1.0, 2.0]), b"input"),
        (b"\x00\xffgarbage{", b'"error"'),
    ]:
        status, body = _post(f"{base}/vgg19_unet/infer", payload)
        assert 400 <= status < 500, (status, body)
        assert message in body, body
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(server["grpc"])
    x = grpcclient.InferInput("input", [1, 3, 32, 32], "FP16")
    x.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float16))
    with pytest.raises(InferenceServerException, match="data-type is 'FP16'"):
        c.infer("vgg19_unet", [x])
    with pytest.raises(InferenceServerException, match="not found|does not exist|unknown"):
        c.get_model_config("nope")
    c.close()
    # Still serving, over both protocols.
    for protocol in ("http", "grpc"):
        with TritonSegmenter(server[protocol], "vgg19_unet", protocol=protocol) as client:
            assert client.predict(_images(2, [(32, 32)])[0]).shape == (32, 32)
    with pytest.raises(SegmenterError, match="cannot read the configuration of 'nope'"):
        TritonSegmenter(server["http"], "nope")


def test_server_stops_cleanly_on_sigterm(server):
    """Last in this module: SIGTERM ends the process with exit code 0 and a shutdown logged."""
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, server["log"].read_text()[-2000:]
    assert "Shutting down" in server["log"].read_text()


def test_serve_refuses_bad_flags(tmp_path):
    # In a child: kserve's protocol module and tritonclient's register the same protobuf symbols, so
    # the server never shares a process with the client (as in deployment).
    proc = run_cli(
        "unet_runtime.cli",
        "serve",
        str(tmp_path / "m.onnx"),
        "--max-batch-size",
        "0",
        subprocess_run=True,
    )
    assert (
        proc.returncode == 1
        and "--max-batch-size 0 must be >= 1" in proc.stderr.strip().splitlines()[-1]
    )
    proc = run_cli(
        "unet_runtime.cli",
        "serve",
        str(tmp_path / "missing.onnx"),
        "--http-port",
        "1",
        "--grpc-port",
        "2",
        subprocess_run=True,
    )
    assert proc.returncode == 1 and "does not exist" in proc.stderr.strip().splitlines()[-1]
