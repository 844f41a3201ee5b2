"""Stage load, for TFLite files: an INT8 TFLite model becomes the equivalent QDQ ONNX model.

Entry points: `is_tflite(path, data)` (extension `.tflite` or the flatbuffer identifier `TFL3`),
`tflite_to_onnx(data, path) -> onnx.ModelProto` and `embedded_tflite(onnx_bytes)`: the converted model carries
the original flatbuffer (base64, metadata key SOURCE_KEY; the package's model hash covers it), so that
`tvmc validate` can run TFLite's own interpreter on the very file the user compiled.

Why ONNX and not TVM's Relax TFLite frontend: the frontend emits the same dequantize -> float operator ->
quantize form, but in NHWC and without a model that `tvmc validate` (OpenVINO, onnx's reference evaluator,
`--per-layer`) and the package can run. Written as QDQ ONNX, a TFLite model goes through every later stage as a
QDQ ONNX model does, and the conversion is exact: every TFLite tensor keeps its integer type, scale and zero
point (a quantized tensor t becomes `QuantizeLinear(op(DequantizeLinear(inputs)), scale_t, zp_t)`), int8
weights keep their per-channel scales (axis moved with the layout), int32 biases their scale s_in * s_w, and a
fused activation becomes the Relu/Clip before the QuantizeLinear, which clamps exactly where TFLite's
quantized activation range does. 4-D activations are carried in NCHW: the ONNX model takes and returns
TFLite's NHWC tensors and transposes at its edges (in QDQ, so the NPU's data-movement kernel does it), and
around a reshape or fully-connected layer that flattens NHWC order.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import NpuError

OPSET = 19  # onnx's reference evaluator (validate's third opinion) runs DequantizeLinear from 19 on
_TO_NCHW, _TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)
_NHWC_AXIS_IN_NCHW = (0, 2, 3, 1)  # NHWC axis a is NCHW axis _NHWC_AXIS_IN_NCHW[a]
_CONVERTER = "tvm_npu tflite_onnx"
SOURCE_KEY = "tvm_npu.tflite_source"


def embedded_tflite(onnx_bytes: bytes) -> bytes | None:
    """The TFLite flatbuffer an ONNX model was converted from, or None for a model that is ONNX at the source."""
    model = onnx.load_from_string(onnx_bytes)
    entry = next((p.value for p in model.metadata_props if p.key == SOURCE_KEY), None)
    return None if entry is None else base64.b64decode(entry)


def is_tflite(path: Path, data: bytes) -> bool:
    """A TFLite flatbuffer: by its extension, or by the file identifier at bytes 4-8."""
    return path.suffix.lower() == ".tflite" or data[4:8] == b"TFL3"


def tflite_to_onnx(data: bytes, path: Path) -> onnx.ModelProto:
    """The QDQ ONNX model computing what the INT8 TFLite model in `data` computes (see the module doc)."""
    import tflite

    if data[4:8] != b"TFL3":
        raise NpuError(
            f"{path} is not a TFLite flatbuffer (no TFL3 identifier); give a .tflite file written by TFLite's converter"
        )
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() != 1:
            raise NpuError(
                f"{path} has {model.SubgraphsLength()} subgraphs; only single-subgraph TFLite models "
                "are supported: convert without control flow"
            )
        converted = _Converter(model, path).convert()
    except NpuError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated flatbuffer fails anywhere inside the generated reader
        raise NpuError(f"{path} is not a readable TFLite model ({type(err).__name__}: {str(err)[:120]}); re-export it") from None
    helper.set_model_props(converted, {SOURCE_KEY: base64.b64encode(data).decode()})
    return converted


class _Tensor:
    def __init__(self, model, subgraph, index):
        import tflite
        from tflite.TensorType import TensorType

        t = subgraph.Tensors(index)
        self.index = index
        self.name = t.Name().decode() or f"tensor{index}"
        self.shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        self.type = {v: k for k, v in TensorType.__dict__.items() if not k.startswith("_")}[t.Type()]
        buffer = model.Buffers(t.Buffer())
        raw = buffer.DataAsNumpy() if buffer is not None and buffer.DataLength() else None
        self.data = None
        if raw is not None:
            dtype = {
                "INT8": np.int8,
                "UINT8": np.uint8,
                "INT16": np.int16,
                "INT32": np.int32,
                "INT64": np.int64,
                "FLOAT32": np.float32,
            }.get(self.type)
            if dtype is None:
                raise NpuError(
                    f"tensor {self.name!r} holds {self.type} constants; only int8/uint8/int32/float32 constants are supported"
                )
            self.data = np.frombuffer(raw.tobytes(), dtype).reshape(self.shape)
        q = t.Quantization()
        self.scale = self.zero_point = None
        self.axis = 0
        if isinstance(q, tflite.QuantizationParameters) and q.ScaleLength():
            self.scale = q.ScaleAsNumpy().astype(np.float32)
            self.zero_point = q.ZeroPointAsNumpy().astype(np.int64)
            self.axis = int(q.QuantizedDimension())

    @property
    def quantized(self) -> bool:
        return self.scale is not None and self.type in ("INT8", "UINT8", "INT32")


def _activation_name(code: int) -> str:
    from tflite.ActivationFunctionType import ActivationFunctionType

    return {v: k for k, v in ActivationFunctionType.__dict__.items() if not k.startswith("_")}[code]


def _same_pads(size, k, stride, dilation):
    """TFLite's SAME padding (ComputePaddingWithOffset): the odd extra row/column goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _Converter:
    def __init__(self, model, path: Path):
        from tflite.BuiltinOperator import BuiltinOperator

        self.model, self.path = model, path
        self.graph = model.Subgraphs(0)
        self.opnames = {v: k for k, v in BuiltinOperator.__dict__.items() if not k.startswith("_")}
        self.tensors = [_Tensor(model, self.graph, i) for i in range(self.graph.TensorsLength())]
        self.nodes, self.inits = [], []
        self.onnx_name = {}  # TFLite tensor index -> ONNX tensor holding its (integer or float) values
        self.nchw = set()  # TFLite tensor indices whose ONNX tensor is NCHW
        self.dequantized = {}  # TFLite tensor index -> its shared DequantizeLinear output
        self.counter = 0
        self.outputs = {int(i) for i in self.graph.OutputsAsNumpy()}

    # -- helpers --------------------------------------------------------------------------------------------
    def fresh(self, hint):
        self.counter += 1
        return f"{hint}__{self.counter}"

    def const(self, array, hint):
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, outputs=None, name=None, **attrs):
        outputs = outputs or [self.fresh(op.lower())]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name or outputs[0], **attrs))
        return outputs[0]

    def qparams(self, t: _Tensor, axis=None):
        scale, zp = t.scale, t.zero_point.astype(np.int8 if t.type == "INT8" else np.uint8 if t.type == "UINT8" else np.int32)
        if axis is None:  # activations: TFLite's spec is per-tensor
            scale, zp = scale[:1], zp[:1]
            return self.const(scale.reshape(()), f"{t.name}_scale"), self.const(zp.reshape(()), f"{t.name}_zp")
        return self.const(scale, f"{t.name}_scale"), self.const(zp, f"{t.name}_zp")

    def dequantize(self, index):
        """The float value of a TFLite tensor (activation or constant), in this converter's layout."""
        if index in self.dequantized:
            return self.dequantized[index]
        t = self.tensors[index]
        data = t.data
        if data is not None and len(t.shape) == 4:  # constant 4-D operands follow the activations' layout
            data = data.transpose(_TO_NCHW)
        if data is not None and not t.quantized:
            result = self.const(data.astype(np.float32), t.name)
        else:
            source = self.onnx_name[index] if data is None else self.const(data, t.name)
            if not t.quantized:
                return source  # a float activation (a model's float input, before its QUANTIZE)
            per_axis = len(t.scale) > 1
            scale, zp = self.qparams(t, axis=t.axis if per_axis else None)
            attrs = {}
            if per_axis:
                attrs["axis"] = _NHWC_AXIS_IN_NCHW[t.axis] if data is not None and len(t.shape) == 4 else t.axis
            result = self.node("DequantizeLinear", [source, scale, zp], [self.fresh(f"{t.name}_dq")], **attrs)
        self.dequantized[index] = result
        return result

    def emit(self, out_index, value, nchw, name):
        """Quantizes the float `value` into TFLite tensor `out_index` (or keeps it float if that is float)."""
        t = self.tensors[out_index]
        if nchw:
            self.nchw.add(out_index)
        # A graph output in TFLite's layout is written under its own name (validate reads its quantization there).
        target = t.name if out_index in self.outputs and not nchw else self.fresh(t.name)
        if not t.quantized:
            self.onnx_name[out_index] = self.node("Identity", [value], [target], name=name)
            return
        scale, zp = self.qparams(t)
        self.onnx_name[out_index] = self.node("QuantizeLinear", [value, scale, zp], [target], name=f"{name}_quantize")

    def activation(self, value, code, name):
        act = _activation_name(code)
        if act == "NONE":
            return value
        if act == "RELU":
            return self.node("Relu", [value], name=f"{name}_relu")
        bounds = {"RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}.get(act)
        if bounds is None:
            raise NpuError(
                f"{self.path}: fused activation {act} of {name!r} is not supported (ReLU, ReLU6 and "
                "ReLU_N1_TO_1 are); re-export without it"
            )
        lo, hi = (self.const(np.float32(b), f"{name}_clip") for b in bounds)
        return self.node("Clip", [value, lo, hi], name=f"{name}_clip")

    def nhwc_flat(self, index):
        """The tensor's float value in TFLite's own (NHWC) element order."""
        value = self.dequantize(index)
        if index in self.nchw:
            value = self.node("Transpose", [value], perm=list(_TO_NHWC))
        return value

    # -- conversion ----------------------------------------------------------------------------------------
    def convert(self) -> onnx.ModelProto:
        graph_inputs = []
        for index in self.graph.InputsAsNumpy():
            t = self.tensors[index]
            elem = helper.np_dtype_to_tensor_dtype(
                np.dtype({"INT8": "int8", "UINT8": "uint8", "FLOAT32": "float32"}.get(t.type, "int64"))
            )
            if t.type not in ("INT8", "UINT8", "FLOAT32"):
                raise NpuError(f"{self.path}: input {t.name!r} is {t.type}; int8, uint8 or float32 inputs are supported")
            graph_inputs.append(helper.make_tensor_value_info(t.name, elem, list(t.shape)))
            self.onnx_name[index] = t.name
            if len(t.shape) == 4:  # into NCHW (quantized: in QDQ, so that the NPU's data movement does it)
                moved = self.node("Transpose", [self.dequantize(index)], perm=list(_TO_NCHW), name=f"{t.name}_to_nchw")
                self.dequantized.pop(index, None)
                self.emit(index, moved, True, f"{t.name}_to_nchw")
        self._check_quantized()
        for i in range(self.graph.OperatorsLength()):
            self.operator(self.graph.Operators(i))
        graph_outputs = []
        for index in self.graph.OutputsAsNumpy():
            t = self.tensors[index]
            if index in self.nchw:  # back into TFLite's layout, under the output's name
                back = self.node("Transpose", [self.dequantize(index)], perm=list(_TO_NHWC), name=f"{t.name}_to_nhwc")
                if t.quantized:
                    self.node("QuantizeLinear", [back, *self.qparams(t)], [t.name], name=f"{t.name}_to_nhwc_quantize")
                else:
                    self.node("Identity", [back], [t.name], name=f"{t.name}_output")
            elem = helper.np_dtype_to_tensor_dtype(np.dtype({"INT8": "int8", "UINT8": "uint8"}.get(t.type, "float32")))
            graph_outputs.append(helper.make_tensor_value_info(t.name, elem, list(t.shape)))
        graph = helper.make_graph(self.nodes, self.path.stem, graph_inputs, graph_outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=_CONVERTER)
        model.ir_version = 9
        return model

    def _check_quantized(self):
        """Float or dynamic-range TFLite models are not INT8 programs: say so before converting anything."""
        for i in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(i)
            kind = self.op_kind(op)
            if kind in ("QUANTIZE", "DEQUANTIZE"):
                continue
            ins = [self.tensors[j] for j in op.InputsAsNumpy() if j >= 0]
            if any(t.type == "FLOAT32" and t.data is None for t in ins):
                raise NpuError(
                    f"{self.path} is a float TFLite model ({kind} {self.tensors[op.OutputsAsNumpy()[0]].name!r} "
                    "computes in float32); tvm_npu compiles INT8 TFLite: convert with full-integer "
                    "quantization (TFLiteConverter with a representative_dataset, TFLITE_BUILTINS_INT8)"
                )
            if any(t.type == "INT16" for t in ins):
                raise NpuError(
                    f"{self.path}: {kind} has int16 activations (16x8 quantization); tvm_npu compiles "
                    "int8 activations: convert with TFLITE_BUILTINS_INT8"
                )

    def op_kind(self, op):
        code = self.model.OperatorCodes(op.OpcodeIndex())
        return self.opnames.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")

    def operator(self, op):
        kind = self.op_kind(op)
        handler = getattr(self, f"op_{kind.lower()}", None)
        ins = [int(j) for j in op.InputsAsNumpy()]
        outs = [int(j) for j in op.OutputsAsNumpy()]
        name = self.tensors[outs[0]].name
        if handler is None:
            supported = sorted(k[3:].upper() for k in dir(self) if k.startswith("op_") and k != "op_kind")
            raise NpuError(
                f"{self.path}: TFLite operator {kind} (producing {name!r}) is not supported; supported: "
                f"{', '.join(supported)}; replace it before converting to TFLite"
            )
        handler(op, ins, outs, name)

    def options(self, op, cls):
        table = op.BuiltinOptions()
        options = cls()
        options.Init(table.Bytes, table.Pos)
        return options

    # Each op_<KIND>(op, inputs, outputs, name) converts one TFLite operator.
    def op_conv_2d(self, op, ins, outs, name, depthwise=False):
        from tflite.Conv2DOptions import Conv2DOptions
        from tflite.DepthwiseConv2DOptions import DepthwiseConv2DOptions
        from tflite.Padding import Padding

        o = self.options(op, DepthwiseConv2DOptions if depthwise else Conv2DOptions)
        x, w = self.tensors[ins[0]], self.tensors[ins[1]]
        if w.data is None or not w.quantized:
            raise NpuError(f"{self.path}: {name!r} has non-constant or float weights; only INT8 constant weights are supported")
        _, h, width, cin = x.shape
        if depthwise:  # TFLite [1, kh, kw, C*M] -> ONNX [C*M, 1, kh, kw], one group per input channel
            weights, axis, group = w.data.transpose(3, 0, 1, 2), 0, cin
        else:  # OHWI -> OIHW
            weights, axis, group = w.data.transpose(0, 3, 1, 2), 0, 1
        kh, kw = weights.shape[2:]
        strides = [o.StrideH(), o.StrideW()]
        dilations = [o.DilationHFactor(), o.DilationWFactor()]
        pads = [0, 0, 0, 0]
        if o.Padding() == Padding.SAME:
            top, bottom = _same_pads(h, kh, strides[0], dilations[0])
            left, right = _same_pads(width, kw, strides[1], dilations[1])
            pads = [top, left, bottom, right]
        per_axis = len(w.scale) > 1
        w_scale, w_zp = self.qparams(w, axis=axis if per_axis else None)
        dq_w = self.node(
            "DequantizeLinear", [self.const(weights, f"{w.name}"), w_scale, w_zp], **({"axis": axis} if per_axis else {})
        )
        inputs = [self.dequantize(ins[0]), dq_w]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.dequantize(ins[2]))
        value = self.node(
            "Conv", inputs, name=name, strides=strides, dilations=dilations, pads=pads, group=group, kernel_shape=[kh, kw]
        )
        self.emit(outs[0], self.activation(value, o.FusedActivationFunction(), name), True, name)

    def op_depthwise_conv_2d(self, op, ins, outs, name):
        self.op_conv_2d(op, ins, outs, name, depthwise=True)

    def op_fully_connected(self, op, ins, outs, name):
        from tflite.FullyConnectedOptions import FullyConnectedOptions

        o = self.options(op, FullyConnectedOptions)
        w = self.tensors[ins[1]]
        if w.data is None or not w.quantized:
            raise NpuError(f"{self.path}: {name!r} has non-constant or float weights; only INT8 constant weights are supported")
        x = self.nhwc_flat(ins[0])
        if len(self.tensors[ins[0]].shape) != 2:
            x = self.node("Reshape", [x, self.const(np.array([-1, w.shape[1]], np.int64), f"{name}_flat")])
        per_axis = len(w.scale) > 1
        w_scale, w_zp = self.qparams(w, axis=0 if per_axis else None)
        dq_w = self.node("DequantizeLinear", [self.const(w.data, w.name), w_scale, w_zp], **({"axis": 0} if per_axis else {}))
        inputs = [x, dq_w]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.dequantize(ins[2]))
        value = self.node("Gemm", inputs, name=name, transB=1)
        out_shape = self.tensors[outs[0]].shape
        if len(out_shape) != 2:  # keep_num_dims
            value = self.node("Reshape", [value, self.const(np.array(out_shape, np.int64), f"{name}_shape")])
        self.emit(outs[0], self.activation(value, o.FusedActivationFunction(), name), False, name)

    def _binary(self, op, ins, outs, name, onnx_op, options_cls):
        operands = []
        four_d = any(len(self.tensors[i].shape) == 4 for i in ins)
        for i in ins:
            t = self.tensors[i]
            if four_d and len(t.shape) < 4 and t.data is not None:  # a broadcast constant: into NCHW broadcasting
                full = (1,) * (4 - len(t.shape)) + t.shape
                value = self.dequantize(i)
                value = self.node("Reshape", [value, self.const(np.array(full, np.int64), f"{name}_b")])
                operands.append(self.node("Transpose", [value], perm=list(_TO_NCHW)))
            elif four_d and len(t.shape) < 4:
                raise NpuError(f"{self.path}: {name!r} broadcasts a rank-{len(t.shape)} activation over a 4-D one; not supported")
            else:
                operands.append(self.dequantize(i))
        value = self.node(onnx_op, operands, name=name)
        code = self.options(op, options_cls).FusedActivationFunction() if op.BuiltinOptions() else 0
        self.emit(outs[0], self.activation(value, code, name), four_d, name)

    def op_add(self, op, ins, outs, name):
        from tflite.AddOptions import AddOptions

        self._binary(op, ins, outs, name, "Add", AddOptions)

    def op_sub(self, op, ins, outs, name):
        from tflite.SubOptions import SubOptions

        self._binary(op, ins, outs, name, "Sub", SubOptions)

    def op_mul(self, op, ins, outs, name):
        from tflite.MulOptions import MulOptions

        self._binary(op, ins, outs, name, "Mul", MulOptions)

    def _pool(self, op, ins, outs, name, onnx_op):
        from tflite.Padding import Padding
        from tflite.Pool2DOptions import Pool2DOptions

        o = self.options(op, Pool2DOptions)
        _, h, w, _ = self.tensors[ins[0]].shape
        k, s = [o.FilterHeight(), o.FilterWidth()], [o.StrideH(), o.StrideW()]
        pads = [0, 0, 0, 0]
        if o.Padding() == Padding.SAME:
            top, bottom = _same_pads(h, k[0], s[0], 1)
            left, right = _same_pads(w, k[1], s[1], 1)
            pads = [top, left, bottom, right]
        attrs = {"count_include_pad": 0} if onnx_op == "AveragePool" else {}
        value = self.node(onnx_op, [self.dequantize(ins[0])], name=name, kernel_shape=k, strides=s, pads=pads, **attrs)
        self.emit(outs[0], self.activation(value, o.FusedActivationFunction(), name), True, name)

    def op_average_pool_2d(self, op, ins, outs, name):
        self._pool(op, ins, outs, name, "AveragePool")

    def op_max_pool_2d(self, op, ins, outs, name):
        self._pool(op, ins, outs, name, "MaxPool")

    def op_mean(self, op, ins, outs, name):
        from tflite.ReducerOptions import ReducerOptions

        x, axes = self.tensors[ins[0]], self.tensors[ins[1]]
        axes = [int(a) % len(x.shape) for a in np.atleast_1d(axes.data)]
        if ins[0] in self.nchw:
            axes = [_NHWC_AXIS_IN_NCHW[a] for a in axes]
        keep = bool(self.options(op, ReducerOptions).KeepDims())
        out = self.tensors[outs[0]]
        value = self.node(
            "ReduceMean", [self.dequantize(ins[0]), self.const(np.array(sorted(axes), np.int64), "axes")], name=name, keepdims=1
        )
        if not keep:  # the NPU pools keep the dimensions; dropping them is a reshape (a data movement) after
            if out.quantized:
                scale, zp = self.qparams(out)
                value = self.node("QuantizeLinear", [value, scale, zp], name=f"{name}_pooled")
                value = self.node("DequantizeLinear", [value, scale, zp])
            value = self.node("Reshape", [value, self.const(np.array(out.shape, np.int64), f"{name}_shape")])
        self.emit(outs[0], value, ins[0] in self.nchw and keep, name)

    def op_reshape(self, op, ins, outs, name):
        shape = self.tensors[outs[0]].shape
        value = self.node("Reshape", [self.nhwc_flat(ins[0]), self.const(np.array(shape, np.int64), f"{name}_shape")], name=name)
        if len(shape) == 4:
            value = self.node("Transpose", [value], perm=list(_TO_NCHW))
        self.emit(outs[0], value, len(shape) == 4, name)

    def op_squeeze(self, op, ins, outs, name):
        self.op_reshape(op, ins, outs, name)

    def op_concatenation(self, op, ins, outs, name):
        from tflite.ConcatenationOptions import ConcatenationOptions

        o = self.options(op, ConcatenationOptions)
        rank = len(self.tensors[outs[0]].shape)
        axis = o.Axis() % rank
        nchw = rank == 4
        if nchw:
            axis = _NHWC_AXIS_IN_NCHW[axis]
        value = self.node("Concat", [self.dequantize(i) for i in ins], name=name, axis=axis)
        self.emit(outs[0], self.activation(value, o.FusedActivationFunction(), name), nchw, name)

    def op_pad(self, op, ins, outs, name):
        x, paddings = self.tensors[ins[0]], self.tensors[ins[1]].data.astype(np.int64)
        if len(x.shape) == 4:
            paddings = paddings[list(_TO_NCHW)]
        pads = np.concatenate([paddings[:, 0], paddings[:, 1]])
        value = self.node("Pad", [self.dequantize(ins[0]), self.const(pads, f"{name}_pads")], name=name)
        self.emit(outs[0], value, len(x.shape) == 4, name)

    def op_softmax(self, op, ins, outs, name):
        from tflite.SoftmaxOptions import SoftmaxOptions

        beta = self.options(op, SoftmaxOptions).Beta()
        value = self.dequantize(ins[0])
        if beta != 1.0:
            value = self.node("Mul", [value, self.const(np.float32(beta), f"{name}_beta")])
        axis = 1 if ins[0] in self.nchw else -1
        self.emit(outs[0], self.node("Softmax", [value], name=name, axis=axis), ins[0] in self.nchw, name)

    def _unary(self, ins, outs, name, onnx_op):
        self.emit(outs[0], self.node(onnx_op, [self.dequantize(ins[0])], name=name), ins[0] in self.nchw, name)

    def op_logistic(self, op, ins, outs, name):
        self._unary(ins, outs, name, "Sigmoid")

    def op_tanh(self, op, ins, outs, name):
        self._unary(ins, outs, name, "Tanh")

    def op_hard_swish(self, op, ins, outs, name):
        self._unary(ins, outs, name, "HardSwish")

    def op_relu(self, op, ins, outs, name):
        self._unary(ins, outs, name, "Relu")

    def op_relu6(self, op, ins, outs, name):
        value = self.activation(self.dequantize(ins[0]), 3, name)  # ActivationFunctionType.RELU6
        self.emit(outs[0], value, ins[0] in self.nchw, name)

    def op_quantize(self, op, ins, outs, name):
        """Float -> int8 at a model's input, or a requantization between two int8 tensors."""
        self.emit(outs[0], self.dequantize(ins[0]), ins[0] in self.nchw, name)

    def op_dequantize(self, op, ins, outs, name):
        self.emit(outs[0], self.dequantize(ins[0]), ins[0] in self.nchw, name)
