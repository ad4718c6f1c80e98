"""fp16-typed copies of fp32 graphs for strongly typed TensorRT builds (TensorRT 11 has no weak typing).

The conversion keeps the graph's inputs and outputs float32 and leaves the numerically fragile ops in
float32 (:data:`FP16_KEEP_FP32`); everything else, weights included, becomes float16, with Casts at the
borders of the float32 islands. A strongly typed build then runs exactly these types.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import LatentmuseError
from ..artifacts.onnx_files import check_onnx, external_data_files, save_onnx

#: Ops kept in float32 in the fp16 graph: normalisation statistics (GroupNorm exports as
#: InstanceNormalization), softmax, mean/variance reductions, and the timestep sinusoids.
FP16_KEEP_FP32 = (
    "GroupNormalization", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
    "Softmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Reciprocal",
    "Sin", "Cos", "Exp", "Range",
)  # fmt: skip


def convert_fp16(src: str | Path, dst: str | Path, external: bool) -> None:
    """Write the fp16-typed copy of the fp32 graph ``src`` to ``dst`` (external data when ``external``)."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    # The converter's own shape inference serialises the whole model, which protobuf refuses past 2 GiB;
    # the exported graphs already carry inferred shapes (check_onnx), so big ones skip it.
    big = bool(external_data_files(src))
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to fp16 range" for tiny weights
        # Casts of the fp32 graph (int timestep -> float, ...) stay as written: the converter retypes
        # them to fp16 without fixing the value_info behind them when a blocked op consumes them.
        casts = [n.name for n in model.graph.node if n.op_type == "Cast" and n.name]
        half = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=block, node_block_list=casts, disable_shape_infer=big,
        )
    del model  # the fp32 copy (GBs for the UNets) is not needed past this point
    _restore_io_types(src, half)
    save_onnx(half, dst, external)
    del half
    check_onnx(dst)


def _restore_io_types(src: str | Path, half) -> None:
    """Cast back any graph output the converter left in fp16 (it does when a blocked op feeds it)."""
    import onnx
    from onnx import helper

    fp32 = onnx.load(str(src), load_external_data=False)  # the header is enough for the I/O types
    wanted = {o.name: o.type.tensor_type.elem_type for o in fp32.graph.output}
    for out in half.graph.output:
        want = wanted.get(out.name)
        if want is None or out.type.tensor_type.elem_type == want:
            continue
        inner = f"{out.name}__fp16"
        for node in half.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        for vi in half.graph.value_info:
            if vi.name == out.name:
                vi.name = inner
        half.graph.node.append(helper.make_node("Cast", [inner], [out.name], to=want, name=f"{out.name}__to_fp32"))
        out.type.tensor_type.elem_type = want
    inputs = {i.name: i.type.tensor_type.elem_type for i in fp32.graph.input}
    for inp in half.graph.input:
        if inp.name in inputs and inp.type.tensor_type.elem_type != inputs[inp.name]:
            raise LatentmuseError(f"fp16 conversion changed the type of input {inp.name!r}.")
