"""The compiler, stage by stage: the one place that shows the whole pipeline in order.

    ONNX ─► frontend ─► build ─► package (model.tar)

Later stages (quantize, partition, plan, lower) slot in between frontend and build;
each takes the previous stage's product and hands its own forward.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from . import __version__
from .atomic import check_output_path
from .build import build
from .frontend import import_onnx
from .package import PackageMetadata, write_package
from .target import NpuConfig, resolve_target


@dataclass
class CompileResult:
    """What `compile` produced and how long each stage took (seconds)."""

    package_path: Path
    metadata: PackageMetadata
    stage_seconds: dict[str, float] = field(default_factory=dict)


def compile(  # noqa: A001 - mirrors tvm.compile / tvmc compile
    model: str | Path,
    output: str | Path = "module.tar",
    target: str | NpuConfig = "npu",
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> CompileResult:
    """Compiles an ONNX model for an NPU target into a package at `output`.

    `target` is `"npu"`, `"npu/<preset>"` or an `NpuConfig` (see `tvm_npu.resolve_target`
    for overrides). Raises `NpuError` with a one-line message for anything a user can fix.
    """
    config = resolve_target(target)
    output = check_output_path(output)
    seconds: dict[str, float] = {}
    with _timed(seconds, "import"):
        imported = import_onnx(model, input_shapes)
    with _timed(seconds, "build"):
        executable = build(imported.mod, config)
    metadata = PackageMetadata(
        model_name=imported.name,
        inputs=imported.inputs,
        outputs=imported.outputs,
        npu_config=config,
        target=json.loads(str(config.tvm_target())),
        versions={"tvm_npu": __version__, "tvm": tvm.__version__},
    )
    with _timed(seconds, "package"):
        write_package(output, executable, metadata, imported.onnx_bytes)
    return CompileResult(output, metadata, seconds)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - start
