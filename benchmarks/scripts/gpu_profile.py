"""Where the GPU time goes: CUDA kernels of an ONNX Runtime session, seen through CUPTI.

ONNX Runtime's own profiler (pip build) times CUDA nodes on the host, where
launches are asynchronous, so it cannot say what the GPU does. PyTorch's
profiler records every CUDA kernel of the process (CUPTI), ORT's included:
the sum of kernel times vs the wall time of a run shows the idle gaps, and
the top kernels show which layers cost what. Usage (GPU machine):
    python benchmarks/scripts/gpu_profile.py MODEL.onnx BATCH [--cuda-graph] [--fold FORM] [--pad]
(--fold and --pad derive the rewritten model from a plain one, as bench-unet does.)
"""

import argparse
import time

import numpy as np
import onnx
import torch
from torch.profiler import ProfilerActivity, profile

from unet_bench.weights import is_stripped, refill
from unet_runtime import ProviderConfig, Segmenter
from unet_runtime import images as im

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("batch", type=int)
ap.add_argument("--cuda-graph", action="store_true")
ap.add_argument("--fold", default="off", help="decoder fold form (unet_export.fold)")
ap.add_argument("--pad", action="store_true", help="channel padding (unet_export.pad)")
args = ap.parse_args()
path, batch, graph = args.model, args.batch, args.cuda_graph
m = onnx.load(path)
if is_stripped(m):
    m = refill(m)
if args.fold != "off":
    from unet_export.fold import fold_upsample_convs

    m, _ = fold_upsample_convs(m, args.fold)
if args.pad:
    from unet_export.pad import pad_channels

    m, _ = pad_channels(m)
onnx.save(m, "/tmp/profiled.onnx")
torch.zeros(1).cuda()  # CUDA context for CUPTI
seg = Segmenter("/tmp/profiled.onnx", providers=["cuda"], strict=True, config=ProviderConfig(cuda_graph=graph))
imgs = [np.random.default_rng(i).integers(0, 256, (512, 512, 3), dtype=np.uint8) for i in range(batch)]
x = im.to_model_input(imgs, seg.info.mean, seg.info.std, seg.info.layout, dtype=seg._input_dtype)
bound = seg._binding_for(seg._session, x)
bound.x_dev.update_inplace(x)
for _ in range(10):
    bound.run(seg._session)
runs = 20
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    t0 = time.perf_counter()
    for _ in range(runs):
        bound.run(seg._session)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / runs * 1e3


def device_us(e):
    # torch >= 2.4 calls it self_device_time_total; older ones self_cuda_time_total.
    return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)


total = sum(device_us(e) for e in prof.key_averages()) / runs / 1e3
print(f"model {path} fold={args.fold} pad={args.pad} batch {batch} cuda_graph={graph}: wall {wall:.3f} ms/run, GPU kernel time {total:.3f} ms/run, "
      f"idle/launch gap {wall - total:.3f} ms ({(wall - total) / wall:.0%})")
rows = sorted(prof.key_averages(), key=lambda e: -device_us(e))[:25]
print(f"{'kernel':<100} {'calls/run':>9} {'ms/run':>8} {'share':>6}")
for e in rows:
    t = device_us(e) / runs / 1e3
    print(f"{e.key[:100]:<100} {e.count / runs:9.1f} {t:8.3f} {t / total:6.1%}")
