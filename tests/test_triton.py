"""Triton model repository: config parsed by Triton's own protobuf, cross-checked with the model,
test data round trip, and the client against a KServe v2 *protocol stub* (not Triton: no Triton
server runs on these machines)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2

from tests.conftest import NARROW, NUM_CLASSES
from unet_export import ConfigError, ExportConfig, export_model
from unet_export.triton import TritonOptions
from unet_export.verify import FP32_REL_L2
from unet_runtime import Segmenter
from unet_runtime.triton_client import TritonSegmenter

TYPES = {"TYPE_FP32": onnx.TensorProto.FLOAT, "TYPE_UINT8": onnx.TensorProto.UINT8}


@pytest.fixture(scope="module")
def repos(tmp_path_factory, confident_weights):
    """One repository per accelerator (and a uint8-input argmax variant)."""
    out = {}
    for acc, head, dtype in (("tensorrt", "softmax", "float32"), ("cuda", "argmax", "uint8"), ("cpu", "logits", "float32")):
        repo = tmp_path_factory.mktemp(f"repo_{acc}")
        cfg = ExportConfig(input_size=(32, 32), num_classes=NUM_CLASSES, width_multiplier=NARROW, layout="nchw",
                           weights=str(confident_weights), head=head, input_dtype=dtype)
        res = export_model(cfg, None, triton=TritonOptions(repo=repo, accelerator=acc, max_batch_size=4,
                                                            preferred_batch_sizes=(2, 4)))
        out[acc] = (repo / "vgg19_unet", res)
    return out


def _config(folder):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("acc", ["tensorrt", "cuda", "cpu"])
def test_config_parses_with_tritons_protobuf_and_matches_the_model(repos, acc):
    folder, result = repos[acc]
    cfg = _config(folder)  # unknown fields or bad enums raise here
    model = onnx.load(str(folder / "1" / "model.onnx"))
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 4 and cfg.name == "vgg19_unet"
    for cfg_io, onnx_io in ((cfg.input[0], model.graph.input[0]), (cfg.output[0], model.graph.output[0])):
        t = onnx_io.type.tensor_type
        assert cfg_io.name == onnx_io.name
        assert TYPES[model_config_pb2.DataType.Name(cfg_io.data_type)] == t.elem_type
        assert list(cfg_io.dims) == [d.dim_value or -1 for d in t.shape.dim][1:]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    kind = model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind)
    assert kind == ("KIND_CPU" if acc == "cpu" else "KIND_GPU")
    accs = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    if acc == "tensorrt":
        assert accs[0].name == "tensorrt" and accs[0].parameters["precision_mode"] == "FP16"
        assert accs[0].parameters["trt_engine_cache_enable"] == "1"
    elif acc == "cuda":
        assert accs[0].name == "cuda" and accs[0].parameters["prefer_nhwc"] == "1"
    else:
        assert not accs
    assert cfg.model_warmup[0].batch_size == 1
    # the export verified every batch Triton may send
    assert max(c["batch"] for c in result.report["verification"]["cases"]) == 4


def test_every_batch_up_to_max_runs(repos):
    folder, _ = repos["tensorrt"]
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in range(1, 5):
        out = session.run(None, {"input": np.random.default_rng(batch).random((batch, 3, 32, 32), np.float32)})[0]
        assert out.shape == (batch, NUM_CLASSES, 32, 32)


@pytest.mark.parametrize("acc", ["tensorrt", "cuda"])
def test_onnx_test_data_round_trips(repos, acc):
    folder, _ = repos[acc]
    data = folder / "1" / "test_data_set_0"
    x = numpy_helper.to_array(onnx.load_tensor(str(data / "input_0.pb")))
    want = numpy_helper.to_array(onnx.load_tensor(str(data / "output_0.pb")))
    got = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    if want.dtype == np.uint8:
        np.testing.assert_array_equal(got, want)
    else:
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= FP32_REL_L2


class _KServeStub(BaseHTTPRequestHandler):
    """Just enough of the KServe v2 HTTP protocol (binary tensor extension) to check a client's requests."""

    session = None
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        header, blob = json.loads(body[:n]), body[n:]
        (inp,) = header["inputs"]
        self.seen.append((self.path, inp["name"], inp["datatype"], inp["shape"]))
        dtype = {"FP32": np.float32, "UINT8": np.uint8}[inp["datatype"]]
        x = np.frombuffer(blob[: inp["parameters"]["binary_data_size"]], dtype).reshape(inp["shape"])
        out = self.session.run(None, {inp["name"]: x})[0]
        name = self.session.get_outputs()[0].name
        raw = out.tobytes()
        meta = json.dumps({"model_name": "vgg19_unet", "outputs": [{
            "name": name, "datatype": {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8"}[out.dtype],
            "shape": list(out.shape), "parameters": {"binary_data_size": len(raw)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Inference-Header-Content-Length", str(len(meta)))
        self.send_header("Content-Length", str(len(meta) + len(raw)))
        self.end_headers()
        self.wfile.write(meta + raw)


@pytest.mark.parametrize("acc", ["tensorrt", "cuda"])
def test_client_requests_against_a_kserve_v2_stub(repos, acc):
    folder, _ = repos[acc]
    model_file = folder / "1" / "model.onnx"
    _KServeStub.session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    _KServeStub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KServeStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = TritonSegmenter(f"127.0.0.1:{server.server_address[1]}", "vgg19_unet", model_file=model_file)
        rng = np.random.default_rng(0)
        imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((32, 32, 3), (50, 40, 3), (32, 32, 3))]
        remote = client.predict(imgs)
        remote_pairs = client.predict_with_proba(imgs) if acc == "tensorrt" else None  # the softmax-head repo
        client.close()
    finally:
        server.shutdown()
    with Segmenter(model_file, providers="cpu") as seg:
        local = seg.predict(imgs)
        local_pairs = seg.predict_with_proba(imgs) if remote_pairs else None
    for r, lo in zip(remote, local):
        np.testing.assert_array_equal(r, lo)
    assert acc != "tensorrt" or len(remote_pairs) == len(local_pairs) == 3
    for (rm, rp), (lm, lp) in zip(remote_pairs or [], local_pairs or []):
        np.testing.assert_array_equal(rm, lm)
        np.testing.assert_allclose(rp, lp, atol=1e-6)
    path, name, dtype, shape = _KServeStub.seen[0]
    assert path == "/v2/models/vgg19_unet/infer" and name == "input" and shape == [3, 3, 32, 32]
    assert dtype == ("UINT8" if acc == "cuda" else "FP32")


def test_bad_triton_options(tmp_path, confident_weights):
    cfg = ExportConfig(input_size=(32, 32), num_classes=NUM_CLASSES, width_multiplier=NARROW, weights=str(confident_weights))
    with pytest.raises(ConfigError, match="--max-batch-size 0 must be >= 1"):
        export_model(cfg, None, triton=TritonOptions(repo=tmp_path / "r", max_batch_size=0))
    with pytest.raises(ConfigError, match="larger than the largest batch the export verifies"):
        export_model(cfg, None, triton=TritonOptions(repo=tmp_path / "r", max_batch_size=64))
    with pytest.raises(ConfigError, match="--accelerator 'tpu'"):
        export_model(cfg, None, triton=TritonOptions(repo=tmp_path / "r", accelerator="tpu"))
    with pytest.raises(ConfigError, match="preferred-batch-sizes"):
        export_model(cfg, None, triton=TritonOptions(repo=tmp_path / "r", max_batch_size=4, preferred_batch_sizes=(8,)))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "other_model").mkdir()
    (busy / "keep.txt").write_text("unrelated")
    with pytest.raises(ConfigError, match="not empty.*--force"):
        export_model(cfg, None, triton=TritonOptions(repo=busy, max_batch_size=2, preferred_batch_sizes=(2,)))
    export_model(cfg, None, triton=TritonOptions(repo=busy, max_batch_size=2, preferred_batch_sizes=(2,), force=True))
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt", "other_model", "vgg19_unet"]
    assert (busy / "keep.txt").read_text() == "unrelated"
