"""`tvmc`: the command line, following the old TVM tvmc's subcommands and flags.

Argument parsing and error mapping only: each subcommand calls one pipeline entry point.
Every user-fixable problem ends as one `tvmc: error: ...` line and a documented exit code
(see tvm_npu.errors); `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import onnx

from . import cache as compile_cache
from . import progress
from .atomic import atomic_output, check_output_path
from .buckets import expand, parse_valid_length, require_fixed
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR, EXIT_OK, NpuError, first_line
from .frontend import MODEL_FORMATS, model_format, parse_input_shapes
from .package import read_package
from .pipeline import compile as compile_model
from .quantize import DEFAULT_OVERFLOW_FIX, OVERFLOW_FIXES, is_quantized
from .report import FORMATS, bucket_rows, buckets_text, measured_host_time, plot, report, summary_text
from .runtime import (
    DEFAULT_NORMALIZATION,
    FILL_MODES,
    IMAGE_NORMALIZATIONS,
    BucketedModel,
    ImageFill,
    describe_fill,
    load,
    make_inputs,
    read_npz,
    write_npz,
)
from .sparse import SPARSE_MODES
from .host import NATIVE, PORTABLE_X86
from .target import OVERRIDABLE_FIELDS, PRESETS, resolve_target
from .tune import RUNNERS, tune
from .validate import (
    DEFAULT_ATOL,
    DEFAULT_ATOL_STEPS,
    DEFAULT_MAX_BIAS_STEPS,
    DEFAULT_MAX_EXACT_GMACS,
    DEFAULT_MIN_COSINE,
    DEFAULT_RTOL,
    DEVICES,
    FP32_MIN_COSINE,
    MIN_WITHIN_STEPS,
    validate,
)
from .version import __version__

EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except NpuError as err:
        return _fail(args, f"error: {err}", err.exit_code)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    except Exception as err:  # noqa: BLE001 - the last line of defence: no traceback without --debug
        message = f"internal error: {type(err).__name__}: {first_line(err)} (rerun with --debug and report it)"
        return _fail(args, message, EXIT_INTERNAL_ERROR)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"tvmc: {message}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too, with the exit code of bad input and a pointer to --help."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"tvmc: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tvmc",
        description="tvm_npu: compile, run and validate ONNX models for an INT8 NPU target.",
        epilog="exit codes: 0 ok, 1 validation failed, 2 bad input or usage, 3 could not validate, "
        "4 internal error, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"tvm_npu {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{compile,run,validate,report,tune,cache}")

    compile_cmd = commands.add_parser("compile", help="compile an ONNX or INT8 TFLite model into a package (.tar)")
    compile_cmd.add_argument("FILE", help="the model to compile (.onnx, or an INT8 .tflite)")
    compile_cmd.add_argument("-o", "--output", default="module.tar", help="package to write (default: module.tar)")
    _add_compile_options(compile_cmd)
    compile_cmd.set_defaults(handler=_compile)

    run_cmd = commands.add_parser("run", help="run a compiled package on the host CPU")
    run_cmd.add_argument("FILE", help="the package written by `tvmc compile`")
    _add_input_options(run_cmd)
    run_cmd.add_argument("-o", "--outputs", help="write the outputs to this .npz file")
    run_cmd.add_argument("--print-time", action="store_true", help="print execution time statistics")
    run_cmd.add_argument("--print-top", type=int, metavar="N", help="print the top N classes of each output")
    run_cmd.add_argument("--repeat", type=int, default=1, help="timing measurements to take (default: 1)")
    run_cmd.add_argument("--number", type=int, default=1, help="runs averaged per measurement (default: 1)")
    run_cmd.set_defaults(handler=_run)

    validate_cmd = commands.add_parser(
        "validate",
        help="compare a package (or an ONNX model, compiled first) against OpenVINO",
        description="Runs the package and a reference on the same inputs and the same ONNX model and compares "
        "every output. Reference chain: OpenVINO (NPU if present, else CPU) -> ONNX Runtime on the same "
        f"model (if installed) -> OpenVINO CPU on the FP32 model (cosine >= {FP32_MIN_COSINE}). "
        "Exit 0 pass, 1 fail, 3 could not validate.",
    )
    validate_cmd.add_argument("FILE", help="a package (.tar) or a model (.onnx, .tflite)")
    _add_input_options(validate_cmd)
    validate_cmd.add_argument(
        "--samples",
        type=int,
        default=1,
        metavar="N",
        help="with --fill-mode: validate on N input samples (seeds --seed .. --seed+N-1; default: 1); "
        "classifier top-1/top-5 agreement is reported as k/N with a 95%% Wilson interval",
    )
    validate_cmd.add_argument(
        "--device", choices=DEVICES, default="AUTO", help="OpenVINO device: AUTO uses the NPU when present, else the CPU"
    )
    validate_cmd.add_argument(
        "--atol-steps",
        type=float,
        default=DEFAULT_ATOL_STEPS,
        help=f"quantized outputs: at least {MIN_WITHIN_STEPS * 100:g}%% of elements at most this many "
        f"quantization steps off (default: {DEFAULT_ATOL_STEPS:g})",
    )
    validate_cmd.add_argument(
        "--max-bias-steps",
        type=float,
        default=DEFAULT_MAX_BIAS_STEPS,
        help=f"quantized outputs: largest mean signed error in steps (default: {DEFAULT_MAX_BIAS_STEPS:g})",
    )
    validate_cmd.add_argument(
        "--per-layer",
        action="store_true",
        help="also compare every quantized intermediate tensor and name the first layer "
        "beyond tolerance (compiles a probed copy of the model)",
    )
    validate_cmd.add_argument(
        "--rtol",
        type=float,
        default=DEFAULT_RTOL,
        help=f"relative tolerance for float outputs, also the float tail's slack on a quantized model (default: {DEFAULT_RTOL})",
    )
    validate_cmd.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance for float outputs (default: {DEFAULT_ATOL})"
    )
    validate_cmd.add_argument(
        "--min-cosine",
        type=float,
        default=DEFAULT_MIN_COSINE,
        help=f"minimum cosine similarity for float models' outputs (and a quantized model's float "
        f"output whose float tail cannot be analysed) (default: {DEFAULT_MIN_COSINE})",
    )
    validate_cmd.add_argument(
        "--reference-isa",
        metavar="ISA",
        help="run OpenVINO's CPU plugin as on a CPU with at most this oneDNN instruction set, "
        "e.g. AVX2 (no VNNI: int8 products summed in saturating int16 pairs), in a child "
        "process; outputs it gets wrong are judged by the exact reference",
    )
    validate_cmd.add_argument(
        "--max-exact-gmacs",
        type=float,
        default=DEFAULT_MAX_EXACT_GMACS,
        metavar="G",
        help="largest model (10^9 multiply-accumulates over all samples) the exact reference "
        "(onnx.reference, ~1 s per GMAC) runs on when the reference's int8 path cannot be "
        f"trusted (default: {DEFAULT_MAX_EXACT_GMACS:g})",
    )
    validate_cmd.add_argument("--report-json", help="also write the report as JSON to this file")
    _add_compile_options(validate_cmd)
    validate_cmd.set_defaults(handler=_validate)
    report_cmd = commands.add_parser("report", help="print the NPU performance model's summary and per-layer table")
    report_cmd.add_argument("FILE", help="the package written by `tvmc compile`")
    report_cmd.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    report_cmd.add_argument("--plot", metavar="PNG", help="also draw per-layer cycles against the roofline bound")
    report_cmd.set_defaults(handler=_report)

    tune_cmd = commands.add_parser(
        "tune",
        help="autotune the NPU layers' tilings (meta_schedule + XGBoost) into a records file",
        description="Searches each distinct NPU layer's SRAM tiling with meta_schedule's evolutionary search and "
        "XGBoost cost model. Records are appended to -o as they are measured; rerunning the same command "
        "resumes. Apply them with `tvmc compile --tuning-records FILE`.",
    )
    tune_cmd.add_argument("FILE", help="the ONNX model to tune (give `tvmc compile` the same file)")
    tune_cmd.add_argument("-o", "--output", required=True, metavar="JSON", help="tuning log to write or resume")
    _add_target_options(tune_cmd)
    tune_cmd.add_argument(
        "--trials", type=int, default=64, metavar="N", help="candidates per task, the default tiling included (default: 64)"
    )
    tune_cmd.add_argument(
        "--runner",
        choices=RUNNERS,
        default="npu-model",
        help="npu-model: score with the NPU performance model (deterministic); local: measure "
        "on this host; rpc: measure on machines registered with an RPC tracker",
    )
    tune_cmd.add_argument("--rpc-tracker", metavar="HOST:PORT", help="RPC tracker address (--runner rpc)")
    tune_cmd.add_argument("--rpc-key", metavar="KEY", help="device key the RPC servers registered with")
    tune_cmd.add_argument("--seed", type=int, default=0, help="search seed (default: 0)")
    tune_cmd.add_argument("--early-stopping", type=int, metavar="N", help="end a task after N trials without a better candidate")
    tune_cmd.add_argument("--plot", metavar="PNG", help="also draw best cost against trials per task")
    tune_cmd.add_argument(
        "--cascade",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="then tune the band height of each conv -> conv pair compile --cascade could fuse; "
        "compile --cascade --tuning-records fuses a pair where its best cascade beats its two "
        "layers' best tilings (default: off)",
    )
    tune_cmd.set_defaults(handler=_tune)

    cache_cmd = commands.add_parser(
        "cache",
        help="list or clear the compile cache",
        description=f"`tvmc compile` reuses the package of an earlier compile of the same inputs from "
        f"{compile_cache.cache_dir()} (folder: $XDG_CACHE_HOME/tvm_npu/compile).",
    )
    cache_cmd.add_argument("action", choices=["list", "clear"], help="list: one line per entry; clear: remove them")
    cache_cmd.set_defaults(handler=_cache)
    return parser


def _cache(args: argparse.Namespace) -> int:
    print(compile_cache.list_text() if args.action == "list" else compile_cache.clear())
    return EXIT_OK


def _tune(args: argparse.Namespace) -> int:
    config, shapes = _target_from_args(args)
    require_fixed(shapes, "tvmc tune")
    result = tune(
        args.FILE,
        args.output,
        config,
        args.trials,
        args.runner,
        args.rpc_tracker,
        args.rpc_key,
        args.seed,
        args.early_stopping,
        shapes,
        args.plot,
        cascade=args.cascade,
    )
    print(result.table())
    print(f"records: {result.log}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    if args.plot:
        check_output_path(args.plot)
    metadata = read_package(args.FILE, load_library=False).metadata
    print(report(metadata, args.format, measured_host_time(args.FILE) if args.format != "csv" else None))
    if args.plot:
        plot(metadata, args.plot)
    return EXIT_OK


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default="npu", help=f"npu or npu/<preset>; presets: {', '.join(PRESETS)} (default: npu = npu/mid)"
    )
    parser.add_argument("--target-npu-config", metavar="JSON", help="hardware description file overriding the preset's fields")
    for name in OVERRIDABLE_FIELDS:
        kind = int if name in ("sram_kib", "mac_rows", "mac_cols", "mac_depth") else float
        parser.add_argument(
            f"--target-npu-{name.replace('_', '-')}", dest=name, type=kind, metavar="N", help=f"override the preset's {name}"
        )
    parser.add_argument(
        "--input-shapes",
        help='fix input shapes, e.g. "input:[1,3,224,224] other:[1,10]"; compile: a set of sizes for a '
        'dimension, e.g. "x:[1,3,48,{160,320,640}]", makes shape buckets (one plan per size in '
        'one package; run pads an input to the smallest bucket that holds it, README "Variable '
        'input sizes")',
    )


def _add_compile_options(parser: argparse.ArgumentParser) -> None:
    _add_target_options(parser)
    parser.add_argument(
        "--model-format",
        choices=MODEL_FORMATS,
        default=None,
        help="input model format (default: from the file: TFLite's TFL3 identifier or .tflite, else ONNX)",
    )
    parser.add_argument(
        "--target-host",
        metavar="CPU",
        help=f"the CPU the library is built for: {PORTABLE_X86} (default, portable: AVX2), "
        f"x86-64-v4 (AVX-512), {NATIVE} (this machine's exact CPU), an LLVM CPU name (znver4) "
        "or 'llvm -mcpu=znver4 -mattr=+avxvnni'; the package records the ISA it needs",
    )
    parser.add_argument(
        "--quantize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="post-training INT8 quantization with NNCF (default: on unless the model is QDQ already)",
    )
    parser.add_argument(
        "--calibration-data",
        metavar="NPZ",
        help="calibration samples: an .npz with one array per input, first axis = samples "
        "(default: seeded random inputs, accuracy unknown)",
    )
    parser.add_argument("--save-quantized", metavar="PATH", help="also write the quantized QDQ ONNX model here")
    parser.add_argument(
        "--overflow-fix",
        choices=OVERFLOW_FIXES,
        default=DEFAULT_OVERFLOW_FIX,
        help="NNCF's overflow fix: 7-bit weights for the first convolutions (first_layer_only), every "
        "Conv/MatMul (enable: the QDQ model then computes exactly on every INT8 CPU runtime, "
        "also without VNNI) or none (disable) (default: first_layer_only)",
    )
    parser.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="run a layer no SRAM tiling fits on the CPU (and say so) instead of stopping",
    )
    parser.add_argument(
        "--sparse",
        choices=SPARSE_MODES,
        default="auto",
        help="CSR (zero-skipping) weights for conv/dense layers: auto where the NPU model predicts "
        "a win, force wherever possible, off never (default: auto)",
    )
    parser.add_argument(
        "--cascade",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="fuse consecutive convolutions in SRAM row bands where that lowers DRAM traffic "
        "(default: off: the cascaded schedule runs its row bands serially on the host, ~10x slower "
        "on the default model)",
    )
    parser.add_argument(
        "--dump-offloads", action="store_true", help="list every operator with where it runs (NPU kernel or CPU) and why"
    )
    parser.add_argument(
        "--tuning-records", metavar="JSON", help="apply a `tvmc tune` log: each tuned layer uses its best measured tiling"
    )
    parser.add_argument(
        "--pad-value",
        type=float,
        default=0.0,
        metavar="V",
        help="shape buckets: the value inputs are padded with up to their bucket (default: 0, zero after "
        "the model's normalisation)",
    )
    parser.add_argument(
        "--valid-length",
        action="append",
        default=[],
        metavar="NAME=INPUT:DIM",
        help="shape buckets: the model input NAME (an integer of one element) receives the unpadded "
        "size of INPUT's dimension DIM, for a model that masks or slices the padding itself",
    )
    parser.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="compile from scratch and leave the compile cache alone (`tvmc cache --help`)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no stage-by-stage progress on stderr (shown by default when stderr is a terminal)",
    )
    parser.add_argument("--print-pass-times", action="store_true", help="print the seconds each compile stage took")


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="shape buckets (run): crop an input larger than the largest bucket to it (default: an error)",
    )
    parser.add_argument(
        "--fill-shapes",
        metavar="SHAPES",
        help='shape buckets: the unpadded shapes --fill-mode fills, e.g. "x:[1,3,48,161]" (default: the '
        'largest bucket); validate takes size sets, "x:[1,3,48,{100,161,500}]", one check per size',
    )
    parser.add_argument("-i", "--inputs", help="an .npz file with one array per model input")
    parser.add_argument(
        "--fill-mode",
        choices=FILL_MODES,
        default="random",
        help="fill inputs when --inputs is not given (default: random); image: a natural picture "
        "resized to each image input (NCHW/NHWC, 1 or 3 channels) and normalised as below",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for --fill-mode random and image (image: seed 0 is the whole picture, others "
        "seeded crops, mirrors and noise of it)",
    )
    parser.add_argument(
        "--image",
        metavar="FILE",
        help="--fill-mode image: this PNG/JPEG instead of matplotlib's sample photograph with a caption",
    )
    parser.add_argument(
        "--image-normalize",
        choices=list(IMAGE_NORMALIZATIONS),
        default=DEFAULT_NORMALIZATION,
        help="--fill-mode image, float inputs: imagenet (pixel/255 - ImageNet mean) / std, unit [0, 1], "
        f"symmetric [-1, 1], raw 0..255 (default: {DEFAULT_NORMALIZATION})",
    )


def _target_from_args(args: argparse.Namespace):
    config = resolve_target(args.target, args.target_npu_config, **{name: getattr(args, name) for name in OVERRIDABLE_FIELDS})
    return config, parse_input_shapes(args.input_shapes) if args.input_shapes else None


def _compile_from_args(args: argparse.Namespace, output: Path):
    config, shapes = _target_from_args(args)
    if args.model_format and Path(args.FILE).is_file():  # a missing file is the load stage's to report
        model_format(Path(args.FILE), Path(args.FILE).read_bytes(), args.model_format)
    with progress.reporting(sys.stderr if sys.stderr.isatty() and not args.quiet else None):
        result = compile_model(
            args.FILE,
            output=output,
            target=config,
            input_shapes=shapes,
            quantize_model=args.quantize,
            calibration_data=args.calibration_data,
            save_quantized=args.save_quantized,
            allow_cpu_fallback=getattr(args, "allow_cpu_fallback", False),
            sparse=getattr(args, "sparse", "auto"),
            cascade=args.cascade,
            tuning_records=args.tuning_records,
            overflow_fix=args.overflow_fix,
            pad_value=args.pad_value,
            valid_length=dict(map(_valid_length, args.valid_length)) or None,
            target_host=args.target_host,
            cache=args.cache,
        )
    operators = result.metadata.extra["operators"]
    on_npu = sum(row["runs_on"] == "npu" for row in operators)
    print(f"{on_npu} of {len(operators)} operators run on the NPU")
    if args.dump_offloads:
        print(format_offloads(operators))
    if args.print_pass_times:
        print(format_pass_times(result.stage_seconds))
    return result


def _valid_length(text: str) -> tuple[str, tuple[str, int]]:
    name, source, dim = parse_valid_length(text)
    return name, (source, dim)


def format_pass_times(stage_seconds: dict[str, float]) -> str:
    """The seconds per compile stage, in the order they ran (`cache`: the copy from the compile cache)."""
    lines = ["compile stage     seconds"]
    lines += [f"  {stage:<14}{seconds:9.3f}" for stage, seconds in stage_seconds.items()]
    lines.append(f"  {'total':<14}{sum(stage_seconds.values()):9.3f}")
    return "\n".join(lines)


def format_offloads(operators: list[dict]) -> str:
    lines = [f"{'name':<16}{'runs on':<18}operators / reason"]
    for row in operators:
        where = row["kernel"] if row["runs_on"] == "npu" else "cpu"
        detail = " + ".join(op.removeprefix("relax.") for op in row["ops"])
        if row["reason"]:
            detail += f"  ({row['reason']})"
        lines.append(f"{row['name']:<16}{where:<18}{detail}")
    return "\n".join(lines)


def _compile(args: argparse.Namespace) -> int:
    result = _compile_from_args(args, Path(args.output))
    meta = result.metadata
    seconds = sum(result.stage_seconds.values())
    reused = " (copied from the compile cache)" if result.stage_seconds.keys() == {"cache"} else ""
    print(f"compiled {meta.model_name} for npu/{meta.npu_config.name} in {seconds:.1f} s{reused} -> {result.package_path}")
    for kind, specs in (("input", meta.inputs), ("output", meta.outputs)):
        for spec in specs:
            print(f"  {kind:<7}{spec.name}: {spec.dtype}{list(spec.shape)}")
    print(summary_text(meta, measured_host_time(result.package_path)))
    if bucket_rows(meta):
        print(buckets_text(bucket_rows(meta)))
    return EXIT_OK


def _image_fill(args: argparse.Namespace) -> ImageFill | None:
    """The --fill-mode image settings; None for the other modes, which --image does not combine with."""
    if args.fill_mode != "image":
        if args.image:
            raise NpuError("--image needs --fill-mode image; add it or drop --image")
        return None
    return ImageFill(Path(args.image) if args.image else None, args.image_normalize)


def _inputs_from_args(args: argparse.Namespace, model) -> dict[str, np.ndarray]:
    if args.inputs:
        return read_npz(args.inputs)
    (specs,) = _fill_specs(args, model, "tvmc run")
    return make_inputs(specs, args.fill_mode, args.seed, _image_fill(args))


def _fill_specs(args: argparse.Namespace, model, command: str) -> list[list]:
    """The input specs --fill-mode fills: the package's, or per --fill-shapes size for shape buckets."""
    if args.fill_shapes is None:
        return [model.inputs]
    if not isinstance(model, BucketedModel):
        raise NpuError(f"--fill-shapes is for packages of shape buckets; {args.FILE} has one fixed shape: drop it")
    shapes = parse_input_shapes(args.fill_shapes)
    if command == "tvmc run":
        require_fixed(shapes, "tvmc run --fill-shapes")
    return [model.specs(sizes) for sizes in expand(shapes)]


def _run(args: argparse.Namespace) -> int:
    if args.outputs:
        check_output_path(args.outputs)
    if args.print_top is not None and args.print_top < 1:
        raise NpuError(f"--print-top must be at least 1, got {args.print_top}")
    model = load(args.FILE)
    inputs = _inputs_from_args(args, model)
    if args.truncate and not isinstance(model, BucketedModel):
        raise NpuError(f"--truncate is for packages of shape buckets; {args.FILE} has one fixed shape: drop --truncate")
    outputs = model.run(inputs, truncate=True) if args.truncate else model.run(inputs)
    if args.print_top:
        for name, value in outputs.items():
            scores = value.reshape(-1)
            top = np.argsort(scores)[::-1][: args.print_top]
            print(f"{name}: " + ", ".join(f"class {i}: {scores[i]:.5g}" for i in top))
    if args.print_time:
        print(model.benchmark(inputs, repeat=args.repeat, number=args.number))
    if args.outputs:  # last: a failing option above leaves no output file
        write_npz(args.outputs, outputs)
    if not (args.outputs or args.print_top or args.print_time):
        for name, value in outputs.items():
            print(f"{name}: {value.dtype}{list(value.shape)} min {value.min():.5g} max {value.max():.5g}")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    if args.report_json:
        check_output_path(args.report_json)
    if args.reference_isa and not re.fullmatch(r"[A-Za-z0-9_]+", args.reference_isa):
        raise NpuError(f"--reference-isa {args.reference_isa!r} is not a oneDNN ISA name; use e.g. AVX2 or AVX512_CORE")
    fp32_onnx = None
    with tempfile.TemporaryDirectory(prefix="tvm_npu_validate_") as folder:
        if args.model_format or Path(args.FILE).suffix in (".onnx", ".tflite"):
            package = _compile_from_args(args, Path(folder) / "model.tar").package_path
            source = Path(args.FILE).read_bytes()
            if model_format(Path(args.FILE), source, args.model_format) == "onnx":
                fp32_onnx = None if is_quantized(onnx.load_from_string(source)) else source
        else:
            package = args.FILE
        model = load(package)
    if args.samples < 1:
        raise NpuError(f"--samples must be at least 1, got {args.samples}")
    if args.truncate:
        raise NpuError("validate compares the inputs as given; crop them to the largest bucket yourself, drop --truncate")
    if args.inputs:
        groups, described = [[read_npz(args.inputs)]], f"--inputs {args.inputs}"
    else:
        image = _image_fill(args)
        groups = [
            [make_inputs(specs, args.fill_mode, args.seed + i, image) for i in range(args.samples)]
            for specs in _fill_specs(args, model, "tvmc validate")
        ]
        described = describe_fill(args.fill_mode, args.seed, args.samples, image)
    reports = []
    for samples in groups:
        checked = model
        if isinstance(model, BucketedModel):  # each size against the reference at that size, unpadded
            checked = model.view({name: value.shape for name, value in samples[0].items()})
            samples = [model.complete(sample) for sample in samples]  # the reference takes the valid lengths too
            print(f"== {checked.describe()}")
            fp32_onnx = None if is_quantized(onnx.load_from_string(model.source_onnx)) else model.source_onnx
        report = validate(
            checked,
            samples,
            args.device,
            args.rtol,
            args.atol,
            args.min_cosine,
            args.atol_steps,
            args.max_bias_steps,
            args.per_layer,
            fp32_onnx,
            args.reference_isa,
            args.max_exact_gmacs,
            inputs_description=described,
        )
        print(report)
        if not report.passed and not args.per_layer:
            print("hint: rerun with --per-layer to find the first layer that diverges")
        reports.append(report)
    if args.report_json:
        data = reports[0].to_dict() if len(reports) == 1 else [report.to_dict() for report in reports]
        with atomic_output(args.report_json) as stream:
            stream.write(json.dumps(data, indent=2).encode())
    return max(report.exit_code for report in reports)


if __name__ == "__main__":
    sys.exit(main())
