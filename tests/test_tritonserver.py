"""The repository ``export-unet --triton-repo`` writes, served by a real Triton Inference Server.

One ``tritonserver`` (loopback ports) loads a repository holding every
configuration Triton can serve on a CPU: INT8 argmax (CPU instances, the
int8 default), fp32 softmax with ``--accelerator cpu``, a size-agnostic
export, an in-graph resize export, ``--max-batch-size`` 1 and 8,
``--instances 2``, and three networks of other architectures (a MobileNetV2
UNet, a DeepLabV3-style and a SegFormer-like model, unet_bench.networks). ``segment-unet serve`` runs beside it on one of the same
models, so both servers answer the same requests in the same test.

Where Triton is, ``UNET_TRITONSERVER`` and ``UNET_TRITON_BACKENDS`` say
(unet_bench.tritonserver); without them (or with a library missing) every
test here skips, naming what is missing.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
import time

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2, service_pb2

from tests.conftest import NARROW, NUM_CLASSES
from tests.oip import Tensor, battery, error_message, post, valid_request
from unet_bench import networks
from unet_bench.serve_load import start_server
from unet_bench.tritonserver import locate, start_triton
from unet_export import ExportConfig, export_model
from unet_export.triton import TritonOptions
from unet_runtime import Segmenter, SegmenterError
from unet_runtime.triton_client import TritonSegmenter

pytestmark = pytest.mark.triton

SIZE = 32
#: name -> (ExportConfig fields, TritonOptions fields): each a configuration Triton serves on a CPU.
MODELS = {
    "int8_argmax": (dict(precision="int8", head="argmax", calibration_count=8), {}),
    "fp32_softmax": (dict(layout="nchw"), dict(accelerator="cpu")),
    "dynamic": (dict(dynamic_size=True, head="argmax"), dict(accelerator="cpu")),
    "frames": (
        dict(resize_in_graph=True, input_dtype="uint8", head="argmax"),
        dict(accelerator="cpu"),
    ),
    "batch1": (dict(head="argmax"), dict(accelerator="cpu", max_batch_size=1)),
    # A long queue delay, so that concurrent requests are seen to be batched together.
    "batch8": (
        dict(head="argmax"),
        dict(accelerator="cpu", max_batch_size=8, max_queue_delay_us=200_000),
    ),
    "instances2": (dict(head="argmax"), dict(accelerator="cpu", instances=2)),
    # Other architectures (unet_bench.networks), exported with export_model(keras_model=...).
    "own_mobilenet_unet": (dict(network="mobilenet_unet", head="argmax"), dict(accelerator="cpu")),
    "own_deeplab_v3": (
        dict(network="deeplab_v3", precision="int8", head="argmax", calibration_count=8),
        {},
    ),
    "own_segformer_like": (dict(network="segformer_like"), dict(accelerator="cpu")),
}
#: Models with a fixed input shape: the malformed-request battery needs one.
FIXED = ("int8_argmax", "fp32_softmax", "batch1", "batch8", "instances2")


@pytest.fixture(scope="module")
def install():
    found, missing = locate()
    if found is None:
        if os.environ.get("UNET_REQUIRE_TRITON"):  # CI provides Triton: its absence is a failure
            pytest.fail(f"UNET_REQUIRE_TRITON is set but Triton cannot run: {missing}")
        pytest.skip(f"needs a Triton Inference Server; missing here: {missing}")
    return found


@pytest.fixture(scope="module")
def repository(install, tmp_path_factory, confident_weights):
    """Every configuration of MODELS exported into one repository (as export-unet --triton-repo does)."""
    root = tmp_path_factory.mktemp("triton-repo")
    for name, (fields, options) in MODELS.items():
        fields = dict(fields)
        network = fields.pop("network", None)
        if network:
            cfg, keras_model = ExportConfig(**fields), getattr(networks, network)()
        else:
            reference = dict(input_size=(SIZE, SIZE), num_classes=NUM_CLASSES)
            reference.update(width_multiplier=NARROW, weights=str(confident_weights))
            cfg, keras_model = ExportConfig(**reference, **fields), None
        opts = {"max_batch_size": 4, **options}
        # force: the repository already holds the models exported before this one.
        export_model(
            cfg,
            None,
            triton=TritonOptions(repo=root, name=name, force=True, **opts),
            keras_model=keras_model,
        )
    return root


@pytest.fixture(scope="module")
def triton(install, repository, tmp_path_factory):
    """tritonserver on the repository, until the module ends; stopped by its PID."""
    log = tmp_path_factory.mktemp("triton-log") / "server.log"
    server = start_triton(install, repository, log, timeout_s=180)
    yield server
    code = server.stop()
    assert code == 0, f"tritonserver exited with {code}:\n{server.log_tail()}"


@pytest.fixture(scope="module")
def ours(repository, tmp_path_factory):
    """segment-unet serve on the int8 model of the same repository (max batch 4)."""
    log = tmp_path_factory.mktemp("ours-log") / "server.log"
    proc, urls = start_server(
        repository / "int8_argmax" / "1" / "model.onnx", 4, "cpu", log, timeout_s=90
    )
    yield urls
    proc.terminate()
    proc.wait(timeout=30)


def _written(repository, name) -> model_config_pb2.ModelConfig:
    return text_format.Parse(
        (repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )


def _repeated(field) -> bool:
    # protobuf 6 deprecates FieldDescriptor.label for is_repeated; older releases have only label.
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED


def _assert_holds(ours, served, where: str = "config") -> None:
    """Every field set in ``ours`` has the same value in ``served`` (which may hold more: Triton's defaults)."""
    for field, value in ours.ListFields():
        other = getattr(served, field.name)
        at = f"{where}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                assert key in other, f"{at}[{key!r}] missing from what the server serves"
                if hasattr(item, "ListFields"):
                    _assert_holds(item, other[key], f"{at}[{key!r}]")
                else:
                    assert item == other[key], (at, key)
        elif _repeated(field):
            assert len(value) == len(other), (at, list(value), list(other))
            for i, (a, b) in enumerate(zip(value, other, strict=True)):
                if field.message_type is not None:
                    _assert_holds(a, b, f"{at}[{i}]")
                else:
                    assert a == b, (f"{at}[{i}]", a, b)
        elif field.message_type is not None:
            _assert_holds(value, other, at)
        else:
            assert value == other, (at, value, other)


def _stats(triton, name) -> dict:
    (stats,) = triton.get_json(f"/v2/models/{name}/stats")["model_stats"]
    return stats


def _executions(stats) -> dict[int, int]:
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


def _images(seed, sizes):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in sizes]


def _model(repository, name):
    return repository / name / "1" / "model.onnx"


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_is_ready_and_warmed_up(triton, repository, name):
    """READY, and the warm-up the config asks for ran (batch sizes seen in the statistics before any request)."""
    status, _ = triton.get(f"/v2/models/{name}/ready")
    assert status == 200, triton.log_tail()
    assert f"successfully loaded '{name}'" in triton.log.read_text()
    warmups = {w.batch_size for w in _written(repository, name).model_warmup}
    assert warmups, "the config asks for no warm-up"
    stats = _stats(triton, name)
    if name != "batch8":  # batch8's own test sends requests; the others see only their warm-up here
        assert set(_executions(stats)) >= warmups, stats["batch_stats"]


@pytest.mark.parametrize("name", list(MODELS))
def test_served_configuration_is_what_we_wrote(triton, repository, name):
    """GET /v2/models/NAME/config (JSON) and gRPC ModelConfig both hold every field config.pbtxt sets."""
    import tritonclient.grpc as grpcclient

    written = _written(repository, name)
    over_http = json_format.ParseDict(
        triton.get_json(f"/v2/models/{name}/config"),
        model_config_pb2.ModelConfig(),
        ignore_unknown_fields=True,
    )
    _assert_holds(written, over_http, "http")
    client = grpcclient.InferenceServerClient(triton.grpc)
    try:
        over_grpc = client.get_model_config(name).config
    finally:
        client.close()
    _assert_holds(written, over_grpc, "grpc")
    assert over_grpc.max_batch_size == MODELS[name][1].get("max_batch_size", 4)


def test_a_failed_start_shows_the_servers_log(install, tmp_path):
    bad = tmp_path / "repo" / "broken" / "1"
    bad.mkdir(parents=True)
    (bad / "model.onnx").write_bytes(b"not an onnx model")
    (bad.parent / "config.pbtxt").write_text('backend: "onnxruntime"\nmax_batch_size: 1\n')
    with pytest.raises(RuntimeError, match=r"(?s)did not become ready.*broken"):
        start_triton(install, tmp_path / "repo", tmp_path / "log", timeout_s=60)


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", list(MODELS))
def test_masks_equal_a_local_segmenter(triton, repository, name, protocol):
    """Mixed sizes and more images than max_batch_size: Triton's masks are the local Segmenter's."""
    max_batch = MODELS[name][1].get("max_batch_size", 4)
    sizes = [(SIZE, SIZE), (50, 40), (17, 61), (SIZE, SIZE), (64, 48), (SIZE, SIZE)]
    images = _images(3, sizes * (1 + max_batch // len(sizes)))  # more than max_batch_size
    with TritonSegmenter(triton[protocol], name, protocol=protocol, timeout_s=60) as client:
        assert client.max_batch_size == max_batch
        remote = client.predict(images)
        softmax = MODELS[name][0].get("head", "softmax") == "softmax"
        pairs = client.predict_with_proba(images[:2]) if softmax else None
    with Segmenter(_model(repository, name), providers="cpu") as seg:
        local = seg.predict(images)
        local_pairs = seg.predict_with_proba(images[:2]) if pairs else None
    for r, lo in zip(remote, local, strict=True):
        np.testing.assert_array_equal(r, lo)
    for (rm, rp), (lm, lp) in zip(pairs or (), local_pairs or (), strict=True):
        np.testing.assert_array_equal(rm, lm)
        # measured equal to the bit; Triton's backend carries its own ONNX Runtime build, whose
        # kernels may round a last bit differently from the wheel's
        np.testing.assert_allclose(rp, lp, rtol=0, atol=1e-6)


def test_concurrent_clients_are_batched_and_correct(triton, repository):
    """8 clients at once (half HTTP, half gRPC): every mask right, and Triton formed batches larger than 1."""
    name = "batch8"
    images = _images(4, [(SIZE, SIZE)] * 8)
    with Segmenter(_model(repository, name), providers="cpu") as seg:
        expected = seg.predict(images)
    before_stats = _stats(triton, name)
    before = _executions(before_stats)
    start = threading.Barrier(8)

    def client(i):
        protocol = "http" if i % 2 else "grpc"
        with TritonSegmenter(triton[protocol], name, protocol=protocol, timeout_s=60) as c:
            start.wait(timeout=60)
            for k in range(4):
                np.testing.assert_array_equal(c.predict(images[(i + k) % 8]), expected[(i + k) % 8])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    # Triton records a batch's statistics after its responses are sent: the last batch's may lag
    # the clients by a moment (seen: 24 of 32 counted right after the last response).
    deadline = time.monotonic() + 10
    after_stats = _stats(triton, name)
    while (
        after_stats["inference_count"] - before_stats["inference_count"] < 32
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
        after_stats = _stats(triton, name)
    after = _executions(after_stats)
    grown = {b: after[b] - before.get(b, 0) for b in after if after[b] > before.get(b, 0)}
    assert after_stats["inference_count"] - before_stats["inference_count"] == 32
    assert any(b > 1 for b in grown), f"only batches of 1 formed: {grown}"
    print(f"\nbatches Triton formed for 32 requests from 8 clients: {grown}")


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", FIXED)
def test_malformed_requests_get_errors_and_triton_keeps_serving(triton, repository, name):
    t = _tensor(repository, name)
    for case, (body, headers) in battery(t).items():
        status, answer = post(triton.http, f"/v2/models/{name}/infer", body, headers)
        # Triton 2.51 answers a request its JSON parser rejects with 500, everything else with 400.
        assert status >= 400 and error_message(answer), (case, status, answer)
    status, answer = post(triton.http, f"/v2/models/{name}/infer", *valid_request(t))
    assert status == 200, answer


def test_grpc_errors_name_the_problem(triton):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton.grpc)
    try:
        x = grpcclient.InferInput("input", [1, SIZE, SIZE, 3], "FP16")
        x.set_data_from_numpy(np.zeros((1, SIZE, SIZE, 3), np.float16))
        with pytest.raises(InferenceServerException, match="data-type is 'FP16'"):
            client.infer("int8_argmax", [x])
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.get_model_config("nope")
        x = grpcclient.InferInput("input", [1, SIZE, SIZE, 3], "FP32")
        x.set_data_from_numpy(np.zeros((1, SIZE, SIZE, 3), np.float32))
        assert client.infer("int8_argmax", [x]).as_numpy("mask").shape == (1, SIZE, SIZE)
    finally:
        client.close()


def test_metrics_count_the_models_inferences(triton):
    status, text = triton.get("/metrics", port="metrics")
    assert status == 200
    counts = dict(re.findall(rb'nv_inference_count\{model="([^"]+)",version="1"\} (\d+)', text))
    assert set(counts) >= {n.encode() for n in MODELS}, counts.keys()
    # Every model has run at least its warm-up.
    assert all(int(v) > 0 for v in counts.values()), counts


# ------------------------------------------------------------ our server and Triton, side by side
def _tensor(repository, name) -> Tensor:
    cfg = _written(repository, name)
    (inp,), (out,) = cfg.input, cfg.output
    datatype = model_config_pb2.DataType.Name(inp.data_type).removeprefix("TYPE_")
    return Tensor(inp.name, datatype, [1, *inp.dims], out.name, cfg.max_batch_size)


def test_both_servers_refuse_each_malformed_request(triton, ours, repository):
    """The same battery, byte for byte: ours answers each with a 4xx and a message, as Triton answers it."""
    t = _tensor(repository, "int8_argmax")
    for case, (body, headers) in battery(t).items():
        status_t, answer_t = post(triton.http, "/v2/models/int8_argmax/infer", body, headers)
        status_o, answer_o = post(ours["http"], "/v2/models/vgg19_unet/infer", body, headers)
        assert status_t >= 400 and error_message(answer_t), (case, status_t, answer_t)
        assert 400 <= status_o < 500 and error_message(answer_o), (case, status_o, answer_o)
    for address, model in ((triton.http, "int8_argmax"), (ours["http"], "vgg19_unet")):
        status, _ = post(address, f"/v2/models/{model}/infer", *valid_request(t))
        assert status == 200


def test_length_errors_say_what_triton_says(triton, ours, repository):
    """A body 1000 bytes too long or 100 bytes short: 400 and Triton's own words from both servers."""
    cases = battery(_tensor(repository, "int8_argmax"))
    for case, words in [
        ("body 1000 bytes longer than its tensor", "unexpected additional input data for model"),
        ("body 100 bytes shorter than its tensor", "expecting 100 additional bytes"),
    ]:
        body, headers = cases[case]
        for address, model in ((triton.http, "int8_argmax"), (ours["http"], "vgg19_unet")):
            status, answer = post(address, f"/v2/models/{model}/infer", body, headers)
            assert status == 400 and words in error_message(answer), (case, address, answer)


def test_both_servers_serve_the_same_configuration(triton, ours):
    """REST and gRPC: every field segment-unet serve sends decodes to Triton's value for that field."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    def http_config(address, model):
        c = httpclient.InferenceServerClient(address)
        try:
            return json_format.ParseDict(
                c.get_model_config(model),
                model_config_pb2.ModelConfig(),
                ignore_unknown_fields=True,
            )
        finally:
            c.close()

    def grpc_config(address, model) -> model_config_pb2.ModelConfig:
        c = grpcclient.InferenceServerClient(address)
        try:
            return c.get_model_config(model).config
        finally:
            c.close()

    for fetch, where in ((http_config, "http"), (grpc_config, "grpc")):
        mine = fetch(ours[where], "vgg19_unet")
        theirs = fetch(triton[where], "int8_argmax")
        mine.name = theirs.name  # served under another name; everything else must agree
        _assert_holds(mine, theirs, where)
        assert mine.parameters and mine.input and mine.output


def test_grpc_model_config_bytes_decode_like_tritons(triton, ours):
    """Our hand-encoded ModelConfigResponse and Triton's decode, with tritonclient's protos, to the same fields."""
    import grpc

    def raw(address, model) -> bytes:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelConfig",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b,
            )
            return call(service_pb2.ModelConfigRequest(name=model), timeout=30)

    mine = service_pb2.ModelConfigResponse.FromString(raw(ours["grpc"], "vgg19_unet")).config
    theirs = service_pb2.ModelConfigResponse.FromString(raw(triton.grpc, "int8_argmax")).config
    mine.name = theirs.name
    _assert_holds(mine, theirs, "grpc bytes")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_client_works_against_both(triton, ours, repository, protocol):
    images = _images(5, [(SIZE, SIZE), (40, 24), (SIZE, SIZE), (SIZE, SIZE), (20, 70)])
    masks = []
    for address, model in ((triton[protocol], "int8_argmax"), (ours[protocol], "vgg19_unet")):
        with TritonSegmenter(address, model, protocol=protocol, timeout_s=60) as client:
            masks.append(client.predict(images))
    for a, b in zip(*masks, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SegmenterError, match="cannot read the configuration of 'nope'"):
        TritonSegmenter(triton["http"], "nope")


# ------------------------------------------------------------------------- bench-unet serve
@pytest.mark.parametrize("load", ["perf_analyzer", "clients"])
def test_bench_serve_measures_both_servers(triton, repository, tmp_path, load):
    """bench-unet serve on a one-model repository: a row per server, protocol and concurrency, no error."""
    import json
    import shutil

    from tests.conftest import run_cli
    from unet_bench.serve_load import find_perf_analyzer

    if load == "perf_analyzer" and not find_perf_analyzer():
        if os.environ.get("UNET_REQUIRE_TRITON"):
            pytest.fail("UNET_REQUIRE_TRITON is set but UNET_PERF_ANALYZER names no perf_analyzer")
        pytest.skip("needs Triton's perf_analyzer (UNET_PERF_ANALYZER or on PATH)")
    repo = tmp_path / "repo"
    shutil.copytree(repository / "batch8", repo / "batch8")
    argv = ["--repo", repo, "--out", tmp_path / "serve", "--load", load, "--runs", "2"]
    # Millisecond runs on shared cores never hold perf_analyzer's stability: any figure will do here.
    argv += ["--concurrency", "1", "2", "--interval-ms", "800", "--stability", "100"]
    argv += ["--requests", "3", "--paired-rounds", "3"]
    proc = run_cli("unet_bench.serve_load", *argv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "serve.json").read_text())
    rows = [r for r in data["rows"] if "concurrency" in r]
    assert data["load"] == load
    assert {(r["server"], r["protocol"], r["concurrency"]) for r in rows} == {
        (s, p, c) for s in ("builtin", "triton") for p in ("http", "grpc") for c in (1, 2)
    }
    assert all(r["images_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert all(sum(r["batches_formed"].values()) > 0 for r in rows)
    if load == "clients":
        assert all(r["wrong_masks"] == 0 for r in rows)
    assert "% of ceiling" in (tmp_path / "serve.md").read_text()
    for kind in ("builtin", "triton"):
        paired = data["paired"][kind]
        assert len(paired["samples_ms"]["http"]) == 3 and paired["grpc"]["median_ms"] > 0
