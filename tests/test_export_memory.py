"""The ONNX Runtime memory estimate that decides whether a graph can be validated on this machine."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from latentmuse.export import memory
from latentmuse.artifacts.onnx_files import check_onnx


def _lifetimes_graph() -> onnx.ModelProto:
    """Six nodes whose live sets are worked out by hand in the test (x: (N, 4) float32)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    w = numpy_helper.from_array(np.ones((4, 8), np.float32), "W")  # 128 bytes
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="matmul"),  # a: 32N bytes
        helper.make_node("Neg", ["a"], ["u"], name="unused"),  # u: 32N, read by nobody
        helper.make_node("Relu", ["a"], ["b"], name="relu"),  # b: 32N
        helper.make_node("Identity", ["b"], ["c"], name="view"),  # c: b's buffer
        helper.make_node("Mul", ["c", "c"], ["d"], name="mul"),  # d: 32N
        helper.make_node("Add", ["a", "d"], ["y"], name="add"),  # y: 32N
        helper.make_node("Constant", [], ["k"], name="k", value=numpy_helper.from_array(np.zeros(10, np.float32))),
    ]
    model = helper.make_model(helper.make_graph(nodes, "lifetimes", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def test_peak_is_the_hand_worked_live_set():
    # live bytes per node, in units of N (x is 16N, every other tensor 32N):
    #   matmul: x + a = 48 (x freed after)     unused: a + u = 64 (u freed at once)
    #   relu:   a + b = 64                     view:   a + b = 64 (c is b's buffer)
    #   mul:    a + b + d = 96 (b freed)       add:    a + d + y = 96
    # so the peak is 96N, first reached at "mul"; weights: W (128 B) + the Constant (40 B).
    est = memory.estimate(_lifetimes_graph(), {"N": 10})
    assert (est.weights_bytes, est.activations_bytes, est.peak_node) == (168, 960, "mul")
    assert est.total_bytes == 1128
    # Had the view allocated, mul would hold 4 tensors (128N); had u lived on, also 128N: both excluded.


def test_unnamed_dims_count_as_one_and_named_ones_scale():
    model = _lifetimes_graph()
    assert memory.estimate(model, {"N": 1000}).activations_bytes == 96_000
    assert memory.estimate(model, {}).activations_bytes == 96  # a lower bound when the size is unknown


def test_attention_scores_dominate_a_static_graph(tmp_path):
    """Q K^T of 8 heads x 4096 tokens, softmax, times V: the scores and their softmax live together."""
    heads, tokens, dim = 8, 4096, 40
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [heads, tokens, dim])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [heads, dim, tokens])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [heads, tokens, dim])
    o = helper.make_tensor_value_info("o", TensorProto.FLOAT, [heads, tokens, dim])
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"], name="scores"),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="softmax"),
             helper.make_node("MatMul", ["p", "v"], ["o"], name="context")]
    model = helper.make_model(helper.make_graph(nodes, "attention", [q, k, v], [o]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "attention.onnx"
    onnx.save(model, str(path))
    check_onnx(path)  # writes the inferred shapes into the file, as the exporter does
    est = memory.estimate(onnx.load(str(path), load_external_data=False))
    io = heads * tokens * dim * 4
    scores = heads * tokens * tokens * 4  # 537 MB
    # at the softmax q and k are already freed; v waits for the last MatMul
    assert est.activations_bytes == io + 2 * scores and est.peak_node == "softmax"


def test_available_memory_is_at_most_the_physical_memory():
    import os

    available = memory.available_memory_bytes()
    assert 0 < available <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
