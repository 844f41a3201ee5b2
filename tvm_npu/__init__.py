"""tvm_npu: an INT8 NPU compiler backend for Apache TVM.

    import tvm_npu
    result = tvm_npu.compile("model.onnx", output="model.tar", target="npu/micro")
    model = tvm_npu.load("model.tar")
    outputs = model.run({"input": array})
"""

__version__ = "0.1.0"

from .errors import NpuError  # noqa: E402
from .pipeline import CompileResult, compile  # noqa: E402
from .runtime import CompiledModel, load  # noqa: E402
from .target import PRESETS, NpuConfig, resolve_target  # noqa: E402

__all__ = [
    "PRESETS",
    "CompileResult",
    "CompiledModel",
    "NpuConfig",
    "NpuError",
    "compile",
    "load",
    "resolve_target",
]
