#!/usr/bin/env python3
"""Builds the test models and their onnxruntime reference outputs (committed next to this file).

    tests/.peers/venv/bin/python tests/models/make_models.py

Models (IR 8, opset 15, ai.onnx.ml 3 — what tract 0.23 reads):
  dense_autoencoder  12 -> 8 -> 4 -> 8 -> 12 ReLU autoencoder; outputs recon [1,12], score [1,1] (MSE)
  conv1d             [1,3,64] -> Conv1d(8,k5) -> ReLU -> GlobalAvgPool -> Gemm -> Sigmoid; prob [1,1]
  rf_classifier      RandomForestClassifier(40 trees, 3 classes), zipmap off; label [1], probabilities [1,3]
  rf_binary          RandomForestClassifier(30 trees, 2 classes), zipmap off
  iforest            IsolationForest(50 trees); label [1,1], scores [1,1]
  gbr                GradientBoostingRegressor(100 trees); variable [1,1]
Reference: <model>.ref.json = {"inputs": [[...]...], "outputs": {name: [[...]...]}}, one row per
inference (batch 1), computed by onnxruntime (CPU).
"""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingRegressor, IsolationForest, RandomForestClassifier

HERE = Path(__file__).parent
rng = np.random.default_rng(20261127)


def pin(model):
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(name, model, inputs):
    model = pin(model)
    path = HERE / f"{name}.onnx"
    onnx.save(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    outs = {o.name: [] for o in sess.get_outputs()}
    for row in inputs:
        res = sess.run(None, {in_name: row[None, ...].astype(np.float32)})
        for o, r in zip(sess.get_outputs(), res):
            outs[o.name].append(np.asarray(r, dtype=np.float64).ravel().tolist())
    ref = {"input": in_name, "input_shape": [1, *inputs.shape[1:]],
           "inputs": [r.astype(np.float32).astype(np.float64).ravel().tolist() for r in inputs],
           "outputs": outs}
    (HERE / f"{name}.ref.json").write_text(json.dumps(ref))
    print(f"{name}: {path.stat().st_size} bytes, {len(inputs)} reference rows, outputs {list(outs)}")


def dense_autoencoder():
    sizes = [12, 8, 4, 8, 12]
    nodes, inits, prev = [], [], "X"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.normal(0, 1 / np.sqrt(a), (a, b))).astype(np.float32)
        bias = rng.normal(0, 0.1, b).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(bias, f"B{i}")]
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]))
        out = "recon" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Add", [f"m{i}", f"B{i}"], [out if i == len(sizes) - 2 else f"a{i}"]))
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        prev = out
    nodes += [helper.make_node("Sub", ["X", "recon"], ["err"]),
              helper.make_node("Mul", ["err", "err"], ["sq"]),
              helper.make_node("ReduceMean", ["sq"], ["score"], axes=[1], keepdims=1)]
    g = helper.make_graph(nodes, "dense_autoencoder",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 12])],
                          [helper.make_tensor_value_info("recon", TensorProto.FLOAT, [1, 12]),
                           helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)], producer_name="edge-tests")
    save("dense_autoencoder", m, rng.normal(0, 1, (48, 12)))


def conv1d():
    c, t, f, k = 3, 64, 8, 5
    w = rng.normal(0, 0.3, (f, c, k)).astype(np.float32)
    b = rng.normal(0, 0.1, f).astype(np.float32)
    wd = rng.normal(0, 0.5, (f, 1)).astype(np.float32)
    bd = np.array([0.1], np.float32)
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], kernel_shape=[k], pads=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["fl"], axis=1),
             helper.make_node("Gemm", ["fl", "WD", "BD"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["prob"])]
    g = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, c, t])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1])],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
                           numpy_helper.from_array(wd, "WD"), numpy_helper.from_array(bd, "BD")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)], producer_name="edge-tests")
    x = rng.normal(0, 1, (24, c, t))
    x[:, 0, :] += np.sin(np.linspace(0, 8 * np.pi, t))
    save("conv1d", m, x)


def tabular(n=600, f=8):
    x = rng.normal(0, 1, (n, f)).astype(np.float32)
    x[:, 1] = x[:, 0] * 0.5 + rng.normal(0, 0.3, n)
    return x


OPSET = {"": 15, "ai.onnx.ml": 3}


def rf_classifier():
    x = tabular()
    y = (x[:, 0] > 0.3).astype(int) + (x[:, 2] > 0.8).astype(int)  # 3 classes
    clf = RandomForestClassifier(n_estimators=40, max_depth=8, random_state=0).fit(x, y)
    m = to_onnx(clf, x[:1], target_opset=OPSET, options={id(clf): {"zipmap": False}})
    save("rf_classifier", m, tabular(64))


def rf_binary():
    x = tabular()
    y = (x[:, 0] + x[:, 3] > 0.2).astype(int)
    clf = RandomForestClassifier(n_estimators=30, max_depth=6, random_state=1).fit(x, y)
    m = to_onnx(clf, x[:1], target_opset=OPSET, options={id(clf): {"zipmap": False}})
    save("rf_binary", m, tabular(64))


def iforest():
    x = tabular()
    iso = IsolationForest(n_estimators=50, random_state=0).fit(x)
    m = to_onnx(iso, x[:1], target_opset=OPSET)
    test = tabular(48)
    test[:8] *= 4.0  # some outliers
    save("iforest", m, test)


def gbr():
    x = tabular()
    y = x[:, 0] * 2 - x[:, 4] ** 2 + rng.normal(0, 0.1, len(x))
    reg = GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=0).fit(x, y)
    m = to_onnx(reg, x[:1], target_opset=OPSET)
    save("gbr", m, tabular(64))


if __name__ == "__main__":
    dense_autoencoder()
    conv1d()
    rf_classifier()
    rf_binary()
    iforest()
    gbr()
