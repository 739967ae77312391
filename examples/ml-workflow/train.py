#!/usr/bin/env python3
"""Train step of the workflow: features.csv (from `edge-agent featurize`) -> model.onnx.

    python train.py features.csv model.onnx

Fits an IsolationForest on the healthy features and exports it with skl2onnx (IR 8, opset 15,
ai.onnx.ml 3: what the agent's tract runtime reads). Any model that takes [1, n_features]
float32 works the same way.
"""
import csv
import sys

import numpy as np
import onnx
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest

src, dst = sys.argv[1], sys.argv[2]
with open(src) as f:
    rows = list(csv.reader(f))
header, data = rows[0], np.array(rows[1:], dtype=np.float64)
x = data[:, 2:].astype(np.float32)  # drop start_ns, end_ns
print(f"training on {x.shape[0]} windows x {x.shape[1]} features: {', '.join(header[2:])}")
model = IsolationForest(n_estimators=60, contamination=0.01, random_state=0).fit(x)
onx = to_onnx(model, x[:1], target_opset={"": 15, "ai.onnx.ml": 3})
onx.ir_version = 8
onnx.save(onx, dst)
scores = model.decision_function(x)
print(f"wrote {dst}; training scores min {scores.min():.4f} mean {scores.mean():.4f}")
