"""segment-unet serve's batcher and request decoding, in process (no server, no model)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from unet_runtime.errors import SegmenterError
from unet_runtime.protocol import Contract, ProtocolError, decode_request, encode_response
from unet_runtime.serve import Batcher
from unet_runtime.wire import by_datatype


class SlowModel:
    """Adds 1 to its input after ``delay_s``; records the batch sizes it was given, one run at a time."""

    def __init__(self, delay_s=0.05):
        self.delay_s, self.batches, self.running = delay_s, [], 0
        self.lock = threading.Lock()

    def __call__(self, x):
        with self.lock:
            self.running += 1
            assert self.running == 1, "two runs at once"
        time.sleep(self.delay_s)
        with self.lock:
            self.running -= 1
        self.batches.append(len(x))
        if np.any(x < 0):
            raise SegmenterError("negative input")
        return x + 1


def _submit_all(batcher, batches, stagger_s=0.0):
    async def main():
        async def one(i, b):
            await asyncio.sleep(stagger_s * i)
            return await batcher.submit(b)

        results = await asyncio.gather(
            *(one(i, b) for i, b in enumerate(batches)), return_exceptions=True
        )
        await batcher.close()
        return results

    return asyncio.run(main())


def test_waiting_requests_run_together_up_to_the_max_and_get_their_own_rows():
    model = SlowModel()
    batcher = Batcher(model, max_batch_size=4)
    batches = [np.full((1, 2, 2), i, np.float32) for i in range(6)]
    results = _submit_all(batcher, batches, stagger_s=0.005)
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, batches[i] + 1)  # each request its own rows back
    # The first runs alone; the five that arrived meanwhile: 4 (the max), then 1.
    assert model.batches == [1, 4, 1], model.batches
    assert batcher.batch_sizes == {1: 2, 4: 1}


def test_only_requests_of_one_shape_are_put_together():
    model = SlowModel()
    batcher = Batcher(model, max_batch_size=8)
    shapes = [(1, 2, 2), (1, 2, 2), (1, 2, 2), (1, 3, 3)]
    batches = [np.zeros(s, np.float32) for s in shapes]
    results = _submit_all(batcher, batches, stagger_s=0.005)
    assert [r.shape for r in results] == shapes
    # The first runs alone; then the two (2, 2) waiting together, then the (3, 3) one: never mixed,
    # and never ahead of a request that came first.
    assert model.batches == [1, 2, 1], model.batches


def test_a_failed_run_fails_every_request_in_it_and_the_next_runs():
    model = SlowModel()
    batcher = Batcher(model, max_batch_size=4)
    batches = [
        np.zeros((1, 2), np.float32),
        -np.ones((1, 2), np.float32),
        np.ones((1, 2), np.float32),
    ]
    first, bad, good = _submit_all(batcher, batches, stagger_s=0.005)
    np.testing.assert_array_equal(first, batches[0] + 1)
    # bad and good waited together: the run failed for both, with the model's own error.
    assert isinstance(bad, SegmenterError) and isinstance(good, SegmenterError)
    again = _submit_all(Batcher(model, 4), [np.ones((1, 2), np.float32)])
    np.testing.assert_array_equal(again[0], np.full((1, 2), 2))


# ------------------------------------------------------------------------ decoding
CONTRACT = Contract(
    model="m",
    input_name="input",
    input_type=by_datatype("FP32"),
    input_dims=(-1, -1, 3),
    output_name="mask",
    output_type=by_datatype("UINT8"),
    output_dims=(-1, -1),
    max_batch_size=2,
)


def _binary(shape, data: bytes, size=None):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data) if size is None else size},
                }
            ],
            "outputs": [{"name": "mask", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + data, str(len(header))


def test_a_binary_request_decodes_to_its_tensor_and_the_answer_is_binary():
    x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
    body, length = _binary(list(x.shape), x.tobytes())
    req = decode_request(CONTRACT, body, length)
    np.testing.assert_array_equal(req.batch, x)
    assert req.binary_output
    payload, headers = encode_response(CONTRACT, np.ones((2, 4, 5), np.uint8), req)
    n = int(headers["inference-header-content-length"])
    head = json.loads(payload[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 40
    assert payload[n:] == bytes([1] * 40)


def test_json_data_decodes_and_answers_json():
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 1, 2, 3],
                    "datatype": "FP32",
                    "data": [0, 1, 2, 3, 4, 5],
                }
            ]
        }
    ).encode()
    req = decode_request(CONTRACT, body, None)
    np.testing.assert_array_equal(req.batch.reshape(-1), np.arange(6, dtype=np.float32))
    payload, headers = encode_response(CONTRACT, np.zeros((1, 1, 2), np.uint8), req)
    assert headers["content-type"] == "application/json"
    assert json.loads(payload)["outputs"][0]["data"] == [0, 0]


@pytest.mark.parametrize(
    "shape, data, size, words",
    [
        ([1, 2, 2, 3], bytes(56), 48, "unexpected additional input data"),  # 8 bytes left over
        ([1, 2, 2, 3], bytes(40), 48, "expecting 8 additional bytes"),
        ([1, 2, 2, 3], bytes(40), None, "byte size mismatch.*Expected 48, got 40"),
        ([1, 0, 2, 3], b"", None, "every dimension >= 1"),
        ([3, 2, 2, 3], bytes(144), None, "batch-size must be <= 2"),
        ([1, 2, 2, 4], bytes(64), None, "unexpected shape"),
    ],
)
def test_sizes_and_shapes_that_do_not_add_up_are_refused(shape, data, size, words):
    body, length = _binary(shape, data, size)
    with pytest.raises(ProtocolError, match=words) as info:
        decode_request(CONTRACT, body, length)
    assert info.value.status == 400


# ------------------------------------------------------------------ the ModelConfig protobuf
def test_generated_model_config_module_matches_its_proto(tmp_path):
    """runtime/protos/unet_model_config_pb2.py is what protoc makes of unet_model_config.proto (regenerate both together)."""
    pytest.importorskip("grpc_tools.protoc", reason="needs grpcio-tools (protoc)")
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1] / "runtime" / "protos"
    # In a child: protoc in a process that has loaded other protobuf modules can crash.
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"--python_out={tmp_path}"]
        + [str(root / "unet_model_config.proto")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    fresh = (tmp_path / "unet_model_config_pb2.py").read_text()
    committed = (root / "unet_model_config_pb2.py").read_text()

    def descriptor(text: str) -> str:
        # The serialized .proto; the rest (the protobuf version check) varies with grpcio-tools.
        (line,) = [x for x in text.splitlines() if x.startswith("DESCRIPTOR = ")]
        return line

    assert descriptor(fresh) == descriptor(committed)
