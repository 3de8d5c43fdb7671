import time, numpy as np, onnx
from unet_bench.weights import refill
from unet_runtime import Segmenter, ProviderConfig
from unet_runtime import images as im
m = refill(onnx.load(".gpumodels/fp32-softmax-512.onnx")); onnx.save(m, "/tmp/f32.onnx")
rng = np.random.default_rng(0); imgs = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(2)]
with Segmenter("/tmp/f32.onnx", providers="cpu") as s: ref = s.predict_proba(imgs)
for algo in ["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]:
    cfg = ProviderConfig(exact=True, cudnn_conv_algo_search=algo)
    with Segmenter("/tmp/f32.onnx", providers=["cuda"], strict=True, config=cfg) as s:
        p = s.predict_proba(imgs)
        x = im.to_model_input(imgs[:1], (0,0,0), (1,1,1), "nchw")
        s.predict_proba(imgs[:1]); t = time.perf_counter(); [s._infer(x) for _ in range(10)]; dt = (time.perf_counter()-t)/10
    rel = [float(np.linalg.norm(a-b)/np.linalg.norm(b)) for a, b in zip(p, ref)]
    print(f"exact {algo}: rel L2 {rel}, host b1 {dt*1e3:.1f} ms")
# host path breakdown, fp16 argmax
m = refill(onnx.load(".gpumodels/fp16-argmax-512.onnx")); onnx.save(m, "/tmp/f16a.onnx")
with Segmenter("/tmp/f16a.onnx", providers=["cuda"], strict=True) as s:
    s.predict(imgs[0]); N = 30
    t = time.perf_counter(); [s._pipeline.prepare(imgs[0]) for _ in range(N)]; a = (time.perf_counter()-t)/N
    net = [s._pipeline.prepare(imgs[0])[0]]
    t = time.perf_counter(); [im.to_model_input(net, (0,0,0), (1,1,1), "nchw") for _ in range(N)]; b = (time.perf_counter()-t)/N
    x = im.to_model_input(net, (0,0,0), (1,1,1), "nchw")
    t = time.perf_counter(); [s._infer(x) for _ in range(N)]; c = (time.perf_counter()-t)/N
    t = time.perf_counter(); [s.predict(imgs[0]) for _ in range(N)]; d = (time.perf_counter()-t)/N
    print(f"host breakdown ms: prepare {a*1e3:.2f} to_model_input {b*1e3:.2f} infer(copy in+run+copy out) {c*1e3:.2f} predict total {d*1e3:.2f}")
