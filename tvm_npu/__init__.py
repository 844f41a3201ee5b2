"""tvm_npu: an INT8 NPU compiler backend for Apache TVM.

import tvm_npu
result = tvm_npu.compile("model.onnx", output="model.tar", target="npu/micro")
model = tvm_npu.load("model.tar")
outputs = model.run({"input": array})
"""

from .errors import NpuError
from .pipeline import CompileResult, compile
from .runtime import BucketedModel, CompiledModel, load
from .target import PRESETS, NpuConfig, resolve_target
from .version import __version__

__all__ = [
    "__version__",
    "PRESETS",
    "BucketedModel",
    "CompileResult",
    "CompiledModel",
    "NpuConfig",
    "NpuError",
    "compile",
    "load",
    "resolve_target",
]
