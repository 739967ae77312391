#!/usr/bin/env python3
"""onnxruntime per-window latency (batch 1, one thread) on the test models, for the tract
comparison in `cargo bench -p edge-agent --bench inference`. Prints JSON {model: microseconds}."""
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).parent
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
result = {}
for name in sys.argv[2:] or ["dense_autoencoder", "conv1d", "rf_classifier", "rf_binary", "iforest", "gbr"]:
    ref = json.loads((HERE / f"{name}.ref.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(HERE / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
    shape = ref["input_shape"]
    rows = [np.asarray(r, dtype=np.float32).reshape(shape) for r in ref["inputs"]]
    feed = sess.get_inputs()[0].name
    for r in rows[:50]:
        sess.run(None, {feed: r})
    samples = []
    for rep in range(5):
        t0 = time.perf_counter()
        for i in range(RUNS):
            sess.run(None, {feed: rows[i % len(rows)]})
        samples.append((time.perf_counter() - t0) / RUNS * 1e6)
    result[name] = sorted(samples)[2]
print(json.dumps(result))
