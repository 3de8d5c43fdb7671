"""Host pre-processing A/B: the runtime's to_model_input against the lookup-table version it replaced.

Each (implementation, batch, layout, dtype) is timed in a fresh process:
numpy's allocator state carries over between candidates in one process and
moved the lookup-table figures by up to 5x. Usage:
    python benchmarks/scripts/preprocess_bench.py > table.md
"""

import subprocess
import sys

import numpy as np


def lut_to_model_input(images, mean, std, layout, dtype=np.float32):
    """The implementation before session 4: a per-channel lookup table, np.take into strided slices."""
    u8 = np.stack(images)
    if dtype == np.uint8:
        return np.ascontiguousarray(u8.transpose(0, 3, 1, 2)) if layout == "nchw" else u8
    lut = (np.arange(256, dtype=np.float32)[None, :] / np.float32(255) - np.asarray(mean, np.float32)[:, None])
    lut = (lut / np.asarray(std, np.float32)[:, None]).astype(dtype)
    n, h, w, _ = u8.shape
    out = np.empty((n, 3, h, w) if layout == "nchw" else (n, h, w, 3), dtype)
    for c in range(3):
        np.take(lut[c], u8[..., c], out=out[:, c] if layout == "nchw" else out[..., c])
    return out


def one(impl: str, batch: int, layout: str, dtype: str) -> float:
    import timeit

    from unet_runtime.images import to_model_input

    f = lut_to_model_input if impl == "lut" else to_model_input
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(batch)]
    args = (imgs, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), layout)
    for _ in range(10):
        f(*args, dtype=np.dtype(dtype).type)
    t = timeit.repeat(lambda: f(*args, dtype=np.dtype(dtype).type), number=1, repeat=200 if batch == 1 else 60)
    return float(np.median(t)) * 1e3


def main() -> None:
    print("| batch | layout | dtype | lookup table ms | now ms | speed-up |\n|---|---|---|---|---|---|")
    for batch in (1, 8):
        for layout in ("nhwc", "nchw"):
            for dtype in ("uint8", "float32"):
                ms = [float(subprocess.run([sys.executable, __file__, impl, str(batch), layout, dtype], check=True,
                                           capture_output=True, text=True).stdout) for impl in ("lut", "now")]
                print(f"| {batch} | {layout} | {dtype} | {ms[0]:.3f} | {ms[1]:.3f} | {ms[0] / ms[1]:.1f}x |")


if __name__ == "__main__":
    if len(sys.argv) == 5:
        print(one(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
    else:
        main()
