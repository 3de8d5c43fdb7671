"""Host post-processing per head: what Segmenter.predict adds after the model has run (512x512, 21 classes).

The model call is replaced by a cached output, so this is the runtime's own work alone. Usage:
    python benchmarks/scripts/postprocess_bench.py
"""

import numpy as np, timeit
from unet_runtime._pipeline import Pipeline
from unet_runtime.model_info import ModelInfo
rng = np.random.default_rng(0)
img = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
for head, layout in (("argmax", "nhwc"), ("softmax", "nhwc"), ("softmax", "nchw")):
    info = ModelInfo(num_classes=21, layout=layout, height=512, width=512, head=head, mean=(0, 0, 0), std=(1, 1, 1),
                     class_names=tuple(str(i) for i in range(21)))
    pipe = Pipeline(info, np.uint8)
    if head == "argmax":
        out = rng.integers(0, 21, (1, 512, 512), dtype=np.uint8)
    else:
        out = rng.random((1, 512, 512, 21) if layout == "nhwc" else (1, 21, 512, 512), dtype=np.float32)
    t = timeit.repeat(lambda: pipe.predict(img, lambda x: out), number=1, repeat=50)
    print(f"{head} {layout}: Segmenter.predict pre/post {np.median(t) * 1e3:.2f} ms")
