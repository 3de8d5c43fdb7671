"""Exact fp32 (TF32 off) on CUDA vs CPU: is the error in the network or in the sharpened test head?

Compares probabilities and logits (the Softmax node removed) for the refilled
weights with the head kernel scaled x40 (the GPU tests' confident weights) and
unscaled. Usage (GPU machine): python benchmarks/scripts/gpu_exact_probe.py
"""

import numpy as np
import onnx
import onnxruntime as ort

from unet_bench.weights import refill


def logits_model(m):
    sm = next(n for n in m.graph.node if n.op_type == "Softmax")
    m.graph.node.remove(sm)
    out = m.graph.output[0]
    out.name = sm.input[0]
    return m


rng = np.random.default_rng(0)
x = rng.random((2, 3, 512, 512), dtype=np.float32)
cuda = [("CUDAExecutionProvider", {"use_tf32": "0", "prefer_nhwc": "1", "fuse_conv_bias": "0",
                                   "cudnn_conv_algo_search": "EXHAUSTIVE"})]
for scale in (40.0, 1.0):
    for kind in ("probabilities", "logits"):
        m = refill(onnx.load(".gpumodels/fp32-softmax-512.onnx"), head_scale=scale)
        if kind == "logits":
            m = logits_model(m)
        data = m.SerializeToString()
        cpu = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        gpu = ort.InferenceSession(data, providers=cuda).run(None, {"input": x})[0]
        rel = np.linalg.norm(gpu.astype(np.float64) - cpu) / np.linalg.norm(cpu)
        print(f"head x{scale:g} {kind}: rel L2 {rel:.2e}, max abs {np.abs(gpu - cpu).max():.2e}")
