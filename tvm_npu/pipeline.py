"""The compiler, stage by stage: the one place that shows the whole pipeline in order.

    ONNX ─► load ─► quantize ─► import ─► partition ─► plan ─► cascade ─► lower ─► build ─► package (model.tar)

Each stage takes the previous stage's product and hands its own forward. Quantization works
on ONNX, so the package embeds (and `tvmc validate` runs OpenVINO on) the very QDQ model the
library was compiled from. Constant folding waits until partitioning has claimed the int8
weights.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm

from . import cache as compile_cache
from . import progress
from .atomic import atomic_output, check_output_path
from .buckets import Bucketing, crop_tables, dynamic_dims, expand, is_bucketed, lift_weights
from .build import build
from .errors import NpuError
from .cascade import cascade as find_cascades
from .host import host_target, required_isa
from .frontend import ImportedModel, OnnxModel, import_onnx, load_onnx
from .lower import lower
from .package import PackageMetadata, read_package, write_bucket_package, write_package
from .partition import partition
from .passes import LOWERED_PASSES, run_relax_passes
from .perf import estimate
from .plan import LayerPlan, plan, task_key
from .quantize import DEFAULT_OVERFLOW_FIX, is_quantized, load_calibration, quantize
from .runtime import read_npz
from .records import tuned_records, tuned_tiles, warn_unmatched
from .target import NpuConfig, resolve_target
from .version import __version__


@dataclass
class CompileResult:
    """What `compile` produced and how long each stage took (seconds)."""

    package_path: Path
    metadata: PackageMetadata
    stage_seconds: dict[str, float] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # lifted out of the library (shape buckets)


def compile(  # noqa: A001 - mirrors tvm.compile / tvmc compile
    model: str | Path,
    output: str | Path = "module.tar",
    target: str | NpuConfig = "npu",
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    quantize_model: bool | None = None,
    calibration_data: str | Path | None = None,
    save_quantized: str | Path | None = None,
    seed: int = 0,
    allow_cpu_fallback: bool = False,
    sparse: str = "auto",
    cascade: bool = False,
    tuning_records: str | Path | None = None,
    overflow_fix: str = DEFAULT_OVERFLOW_FIX,
    pad_value: float = 0.0,
    valid_length: dict[str, tuple[str, int]] | None = None,
    target_host: str | None = None,
    cache: bool = False,
) -> CompileResult:
    """Compiles an ONNX model for an NPU target into a package at `output`.

    `target` is `"npu"`, `"npu/<preset>"` or an `NpuConfig` (see `tvm_npu.resolve_target`
    for overrides). `quantize_model` (default: when the model is not QDQ already) runs
    post-training quantization, calibrated on `calibration_data` (.npz, one array per input,
    first axis = samples) or on `seed`ed random inputs; `overflow_fix` picks NNCF's 7-bit weights
    (`tvm_npu.quantize.quantize`). `save_quantized` writes the QDQ ONNX.
    Raises `NpuError` with a one-line message for anything a user can fix; a layer no SRAM
    tiling fits is one, unless `allow_cpu_fallback` places it on the CPU (said in the report).
    `sparse` ("auto", "off", "force") decides where conv/dense layers use CSR weights (`tvm_npu.plan`).
    `cascade` fuses consecutive convolutions where that lowers DRAM traffic (`tvm_npu.cascade`); off by
    default, as the cascaded schedule runs its row bands serially on the host.
    `tuning_records` (a `tvmc tune` log) replaces the planner's tiling of every tuned layer
    with the best one measured, and (with `cascade`) decides the pairs it has cascade records of;
    records of another model or NPU config are ignored with a warning.
    `target_host` is the CPU the library is built for (`tvm_npu.host.host_target`: default the portable
    x86-64-v3, `native` this machine's exact CPU); the package records the ISA features it needs.
    `cache` copies the package of an earlier compile of the same inputs, or stores this one (`tvm_npu.cache`);
    off by default for library calls, as the cache key holds tvm_npu's code but not in-process patches of it.
    A dimension of `input_shapes` given as a tuple of sizes makes shape buckets (`tvm_npu.buckets`): one plan
    per combination in one package, padded at run time with `pad_value`; `valid_length` maps an extra
    model input to the (input, dimension) whose unpadded size the runtime fills it with.
    """
    arguments = dict(locals())  # first: every argument, so a new one joins the cache key
    del arguments["cache"]
    output = check_output_path(output)
    run = _compile_buckets if is_bucketed(input_shapes) else _compile_fixed
    if not cache:
        return run(**arguments)
    seconds = compile_cache.cached(
        arguments, lambda staged: run(**{**arguments, "output": staged}, cache_quantization=True).stage_seconds
    )
    return CompileResult(output, read_package(output, load_library=False).metadata, seconds)


def _compile_fixed(pad_value, valid_length, **arguments) -> CompileResult:
    if pad_value != 0.0 or valid_length:
        raise NpuError(
            "--pad-value and --valid-length are for shape buckets; give a size set such as "
            "x:[1,3,48,{160,320}] in --input-shapes, or drop them"
        )
    return _compile(**arguments)


def _compile(
    model,
    output,
    target,
    input_shapes,
    quantize_model,
    calibration_data,
    save_quantized,
    seed,
    allow_cpu_fallback,
    sparse,
    cascade,
    tuning_records,
    overflow_fix,
    target_host,
    cache_quantization: bool = False,
    lift: bool = False,
) -> CompileResult:
    config = resolve_target(target)
    host = host_target(target_host)
    output = check_output_path(output)
    best = tuned_records(tuning_records, model, config) if tuning_records is not None else {}
    tuned = tuned_tiles(best)
    seconds: dict[str, float] = {}
    front, layers = planned(
        model,
        config,
        input_shapes,
        quantize_model,
        calibration_data,
        save_quantized,
        seed,
        allow_cpu_fallback,
        sparse,
        tuned,
        seconds,
        overflow_fix,
        cache_quantization,
    )
    loaded, imported, mod, operators = front.loaded, front.imported, front.mod, front.operators
    if tuned:
        keys = {task_key(layer.kernel, layer.geometry) for layer in layers if layer.geometry is not None}
        warn_unmatched(tuning_records, tuned, keys)
    if cascade:
        with _timed(seconds, "cascade"):
            layers = find_cascades(mod, layers, config, best)
    with _timed(seconds, "lower"):
        mod, layers = lower(mod, layers, config.sram_bytes)
        mod = run_relax_passes(mod, LOWERED_PASSES)
        mod, weights = lift_weights(mod) if lift else (mod, {})
    for layer in layers:
        if layer.placement == "cpu":
            operators[layer.row].update(runs_on="cpu", reason=layer.reason)
    with _timed(seconds, "build"):
        executable = build(mod, config, host)
    metadata = PackageMetadata(
        model_name=imported.name,
        inputs=imported.inputs,
        outputs=imported.outputs,
        npu_config=config,
        target=json.loads(str(config.tvm_target(host))),
        target_isa=required_isa(host),
        versions={"tvm_npu": __version__, "tvm": tvm.__version__},
        extra={
            "quantized": is_quantized(loaded.model),
            "operators": operators,
            "layers": [layer.to_dict() for layer in layers],
            "performance": estimate(layers, config).to_dict(),
            **({"weights": list(weights)} if lift else {}),
        },
    )
    with _timed(seconds, "package"):
        write_package(output, executable, metadata, imported.onnx_bytes)
    return CompileResult(output, metadata, seconds, weights)


def _compile_buckets(
    model, output, input_shapes, pad_value, valid_length, save_quantized, calibration_data, **arguments
) -> CompileResult:
    """One plan per bucket (`_compile` at each fixed shape), then one package holding them all."""
    if save_quantized is not None:
        raise NpuError(
            "--save-quantized writes one model; compile shape buckets without it (each bucket's "
            "quantized model is inside the package as buckets/<i>/model.onnx)"
        )
    valid_length = dict(valid_length or {})
    shapes, dynamic = expand(input_shapes), dynamic_dims(input_shapes)
    for extra, (name, dim) in valid_length.items():
        if dim not in dynamic.get(name, []):
            raise NpuError(
                f"--valid-length {extra}={name}:{dim}: dimension {dim} of {name!r} is not bucketed; "
                f"name a dimension given as a size set in --input-shapes"
            )
    source = Path(model).read_bytes()
    seconds: dict[str, float] = {}
    weights: dict[str, np.ndarray] = {}  # by content: an array two buckets share is stored once
    with tempfile.TemporaryDirectory(prefix="tvm_npu_buckets_") as folder:
        packages = []
        for index, bucket in enumerate(shapes):
            progress.stage(f"bucket {index + 1}/{len(shapes)}: " + " ".join(f"{n}:{list(s)}" for n, s in bucket.items()))
            calibration = (
                None
                if calibration_data is None
                else _bucket_calibration(calibration_data, bucket, pad_value, Path(folder) / f"{index}.npz")
            )
            result = _compile(
                model,
                Path(folder) / f"{index}.tar",
                input_shapes=bucket,
                calibration_data=calibration,
                save_quantized=None,
                lift=True,
                **arguments,
            )
            weights.update(result.weights)
            for stage, spent in result.stage_seconds.items():
                seconds[stage] = seconds.get(stage, 0.0) + spent
            packages.append(result.package_path)
        with _timed(seconds, "crop tables"):
            crops = crop_tables(source, shapes, dynamic)
        bucketing = Bucketing(shapes, dynamic, crops, float(pad_value), valid_length)
        with _timed(seconds, "package"):
            write_bucket_package(output, packages, source, bucketing.to_dict(), weights)
    return CompileResult(output, read_package(output, load_library=False).metadata, seconds)


def _bucket_calibration(path, bucket: dict[str, tuple[int, ...]], pad_value: float, out: Path) -> Path:
    """The calibration samples padded (with the pad value) or cropped to one bucket's shapes."""
    arrays = read_npz(path)
    for name, shape in bucket.items():
        if name in arrays and arrays[name].ndim == len(shape) + 1:
            value = arrays[name][(slice(None), *(slice(0, s) for s in shape))]
            widths = [(0, 0)] + [(0, s - v) for s, v in zip(shape, value.shape[1:])]
            arrays[name] = np.pad(value, widths, constant_values=np.asarray(pad_value).astype(value.dtype))
    np.savez(out, **arrays)
    return out


@dataclass
class Partitioned:
    """The front half of the pipeline: the (QDQ) ONNX model, its Relax import and NPU partition."""

    loaded: OnnxModel
    imported: ImportedModel
    mod: tvm.IRModule
    operators: list[dict]


def partitioned(
    model,
    input_shapes=None,
    quantize_model=None,
    calibration_data=None,
    save_quantized=None,
    seed: int = 0,
    seconds: dict[str, float] | None = None,
    overflow_fix: str = DEFAULT_OVERFLOW_FIX,
    cache_quantization: bool = False,
) -> Partitioned:
    """load -> quantize -> import -> partition, as `compile` runs them (`cache_quantization`: the quantized
    model from the cache, `tvm_npu.cache.cached_quantization`)."""
    seconds = {} if seconds is None else seconds
    if save_quantized is not None:
        save_quantized = check_output_path(save_quantized)
    with _timed(seconds, "load"):
        loaded = load_onnx(model, input_shapes)
    if quantize_model is None:
        quantize_model = not is_quantized(loaded.model)
    if quantize_model:
        with _timed(seconds, "quantize"):

            def quantized():
                samples = load_calibration(calibration_data, loaded.inputs) if calibration_data else None
                return quantize(loaded.model, loaded.inputs, samples, seed, overflow_fix)

            settings = {"seed": seed, "overflow_fix": overflow_fix}
            qdq = (
                compile_cache.cached_quantization(loaded.model, calibration_data, settings, quantized)
                if cache_quantization
                else quantized()
            )
            loaded = OnnxModel(qdq, loaded.inputs, loaded.name)
    if save_quantized is not None:
        with atomic_output(save_quantized) as stream:
            stream.write(loaded.model.SerializeToString())
    with _timed(seconds, "import"):
        imported = import_onnx(loaded)
    with _timed(seconds, "partition"):
        mod, operators = partition(imported.mod)
    return Partitioned(loaded, imported, mod, operators)


def planned(
    model,
    config: NpuConfig,
    input_shapes=None,
    quantize_model=None,
    calibration_data=None,
    save_quantized=None,
    seed: int = 0,
    allow_cpu_fallback: bool = False,
    sparse: str = "auto",
    tuned: dict | None = None,
    seconds: dict[str, float] | None = None,
    overflow_fix: str = DEFAULT_OVERFLOW_FIX,
    cache_quantization: bool = False,
) -> tuple[Partitioned, list[LayerPlan]]:
    """The pipeline up to the plan, as `compile` runs it: what `tvmc tune` tunes (with `allow_cpu_fallback`)."""
    seconds = {} if seconds is None else seconds
    front = partitioned(
        model, input_shapes, quantize_model, calibration_data, save_quantized, seed, seconds, overflow_fix, cache_quantization
    )
    with _timed(seconds, "plan"):
        return front, plan(front.mod, config, allow_cpu_fallback, sparse, tuned)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str):
    start = time.perf_counter()
    progress.stage(stage)
    yield
    seconds[stage] = time.perf_counter() - start
