"""Every bad input gets one clear line, a documented exit code, no traceback and no output file.

The corpus is generated per session by tests/bad_inputs/make_corpus.py (its README lists the
cases); each case runs the real `tvmc` entry point in its own process (`forked_tvmc`), bounded
in time, once plainly and once with `--debug`, which must show the traceback instead.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tvm_npu.errors import EXIT_BAD_INPUT
from tvm_npu.package import read_package

CASE_TIMEOUT = 60  # seconds: every case fails long before; more means a hang
# An output flag per subcommand, added unless a case sets it: whatever a case writes must not survive.
OUTPUTS = {
    "compile": ["-o", "{O}/model.tar"],
    "run": ["-o", "{O}/outputs.npz"],
    "validate": ["--report-json", "{O}/report.json"],
    "report": ["--plot", "{O}/layers.png"],
    "tune": ["-o", "{O}/tuning.json"],
}


@dataclass(frozen=True)
class Case:
    id: str
    args: str  # placeholders: {M} models, {D} data, {P} packages, {V} a valid package, {O} the output folder
    problem: str  # must appear in the error line
    fix: str = ""  # the hint that must appear too
    debug: bool = True  # argparse's usage errors have no traceback to show


CASES = [
    # model files (compile, and validate, which compiles an .onnx first)
    Case("empty-model", "compile {M}/empty.onnx", "is empty", "re-export"),
    Case("empty-model-validate", "validate {M}/empty.onnx", "is empty", "re-export"),
    Case("random-bytes-model", "compile {M}/random.onnx", "not a valid ONNX model", "re-export"),
    Case("truncated-model", "compile {M}/truncated.onnx", "not a valid ONNX model", "re-export"),
    Case("package-as-model", "compile {V}", "not a valid ONNX model", "re-export"),
    Case("model-is-a-folder", "compile {M}/folder.onnx", "is not a regular file", "the .onnx or .tflite file itself"),
    Case("missing-model", "compile {M}/absent.onnx", "does not exist", "check the path"),
    Case("no-graph", "compile {M}/no_graph.onnx", "holds no ONNX graph", "re-export"),
    Case("unknown-opset", "compile {M}/unknown_opset.onnx", "declares ONNX opset 999", "re-export it with opset"),
    Case("unknown-operator", "compile {M}/unknown_operator.onnx", "No Op registered for NoSuchOp", "re-export"),
    Case("foreign-domain-operator", "compile {M}/foreign_domain.onnx", "'com.example'", "re-export"),
    Case("operator-tvm-lacks", "compile --no-quantize {M}/unsupported_operator.onnx", "not supported", "replace those operators"),
    Case("graph-cycle", "compile {M}/cycle.onnx", "topologically sorted", "re-export"),
    Case("initializer-lies-about-shape", "compile {M}/lying_initializer.onnx", "raw_data size (40 bytes)", "re-export"),
    Case(
        "external-data-outside-folder",
        "compile {M}/external_outside.onnx",
        "points outside the model's folder",
        "keep external data files beside the model",
    ),
    Case(
        "external-data-absolute-path",
        "compile {M}/external_absolute.onnx",
        "points outside the model's folder",
        "keep external data files beside the model",
    ),
    Case(
        "external-data-missing",
        "compile {M}/external_missing.onnx",
        "cannot read its external data",
        "keep the data files beside the model",
    ),
    Case(
        "dynamic-dims-no-input-shapes",
        "compile {M}/dynamic.onnx",
        "'x' has dynamic shape [N,4,8,8]",
        '--input-shapes "x:[1,4,8,8]"',
    ),
    Case("zero-dim-model", "compile {M}/zero_dim.onnx", "zero or negative dimension", "--input-shapes"),
    Case("negative-dim-model", "compile {M}/negative_dim.onnx", "[1,4,-3,8]", "--input-shapes"),
    Case(
        "minus-one-dim-is-dynamic",
        "compile {M}/minus_one_dim.onnx",
        "'x' has dynamic shape [1,4,-1,8]",
        '--input-shapes "x:[1,4,1,8]"',
    ),
    Case(
        "shape-that-cannot-fold",
        "compile {M}/data_dependent_shape.onnx",
        "Shape node 'target_shape' reads the shape of 'nonzero' (made by NonZero node 'nonzero')",
        "shapes depend on input shapes only",
    ),
    Case(
        "rank-unknown-output",
        "compile --no-quantize {M}/rank_unknown_output.onnx",
        "output 'y' (from Squeeze node 'squeeze') has no known rank",
        "output shapes depend on input shapes only",
    ),
    Case(
        "negative-input-shapes",
        "compile {M}/dynamic.onnx --input-shapes x:[-1,4,8,8]",
        "dimensions must be positive integers",
        "x:[1,3,224,224]",
    ),
    Case("wrong-rank-input-shapes", "compile {M}/valid.onnx --input-shapes x:[1,4,8]", "declares [1,4,8,8]", "rank 4"),
    Case("unknown-input-shapes-name", "compile {M}/valid.onnx --input-shapes y:[1,4,8,8]", "unknown input(s) y", "inputs are x"),
    Case(
        "calibration-missing-array",
        "compile {M}/valid.onnx --calibration-data {D}/calibration_missing.npz",
        "holds arrays ['z']",
        "one per input: ['x']",
    ),
    Case(
        "calibration-no-samples",
        "compile {M}/valid.onnx --calibration-data {D}/calibration_no_samples.npz",
        "calibration_no_samples.npz",
        "at least 1",
    ),
    # TFLite files (tvm_npu compiles INT8 TFLite; tests/bad_inputs/make_corpus.py writes these with the repo's writer)
    Case("float-tflite", "compile {M}/float.tflite", "is a float TFLite model", "full-integer quantization"),
    Case("float-tflite-validate", "validate {M}/float.tflite", "is a float TFLite model", "full-integer quantization"),
    Case(
        "tflite-operator-unsupported",
        "compile {M}/unsupported_operator.tflite",
        "TFLite operator SQUARED_DIFFERENCE (producing 't4') is not supported",
        "replace it",
    ),
    Case("truncated-tflite", "compile {M}/truncated.tflite", "is not a readable TFLite model", "re-export"),
    Case(
        "random-bytes-tflite", "compile {M}/random.tflite", "not a TFLite flatbuffer (no TFL3 identifier)", "give a .tflite file"
    ),
    Case(
        "model-format-mismatch",
        "compile --model-format tflite {M}/valid.onnx",
        "is an ONNX model, not TFLite",
        "drop --model-format tflite",
    ),
    # hardware descriptions and targets
    Case("unknown-preset", "compile {M}/valid.onnx --target npu/huge", "unknown NPU preset 'huge'", "--target npu/mid"),
    Case("foreign-target", "compile {M}/valid.onnx --target llvm", "unsupported target 'llvm'", "npu/<preset>"),
    Case("negative-sram", "compile {M}/valid.onnx --target-npu-sram-kib -1", "sram_kib", "must be a positive integer"),
    Case(
        "zero-bandwidth",
        "compile {M}/valid.onnx --target-npu-dram-bytes-per-cycle 0",
        "dram_bytes_per_cycle",
        "must be a positive number",
    ),
    Case(
        "non-number-option",
        "compile {M}/valid.onnx --target-npu-sram-kib lots",
        "invalid int value: 'lots'",
        "tvmc compile --help",
        debug=False,
    ),
    Case(
        "config-not-json",
        "compile {M}/valid.onnx --target-npu-config {D}/config_not_json.json",
        "is not valid JSON",
        "fix or regenerate",
    ),
    Case(
        "config-unknown-field",
        "compile {M}/valid.onnx --target-npu-config {D}/config_unknown_field.json",
        "unknown field(s) sram_size",
        "valid fields are",
    ),
    Case(
        "config-negative-sram",
        "compile {M}/valid.onnx --target-npu-config {D}/config_negative_sram.json",
        "config_negative_sram.json: sram_kib",
        "must be a positive integer",
    ),
    Case(
        "config-zero-bandwidth",
        "compile {M}/valid.onnx --target-npu-config {D}/config_zero_bandwidth.json",
        "dram_bytes_per_cycle",
        "must be a positive number",
    ),
    Case(
        "config-unknown-base",
        "compile {M}/valid.onnx --target-npu-config {D}/config_unknown_base.json",
        "unknown NPU preset 'huge'",
        "choose one of",
    ),
    Case(
        "config-missing",
        "compile {M}/valid.onnx --target-npu-config {D}/absent.json",
        "does not exist",
        "--target-npu-config path",
    ),
    Case(
        "sram-too-small-for-any-tiling",
        "compile {M}/wide_qdq.onnx --target npu/micro --target-npu-sram-kib 1",
        "needs at least 3168 B of SRAM",
        "--allow-cpu-fallback",
    ),
    # output paths: refused before any work
    Case("output-folder-missing", "compile {M}/valid.onnx -o {O}/absent/model.tar", "does not exist", "create it first"),
    Case("output-is-a-folder", "compile {M}/valid.onnx -o {O}", "is a directory", "give a file name"),
    Case("run-output-folder-missing", "run {V} -o {O}/absent/out.npz", "does not exist", "create it first"),
    Case("report-plot-folder-missing", "report {V} --plot {O}/absent/layers.png", "does not exist", "create it first"),
    Case("validate-report-folder-missing", "validate {V} --report-json {O}/absent/r.json", "does not exist", "create it first"),
    # tuning logs (tvmc tune -o, compile --tuning-records); another model's or config's log is a warning (tests/test_tune.py)
    Case(
        "tuning-log-random-bytes",
        "compile {M}/valid.onnx --tuning-records {D}/tuning_random.json",
        "are corrupt",
        "rerun tvmc tune",
    ),
    Case(
        "tuning-log-not-ours",
        "compile {M}/valid.onnx --tuning-records {D}/tuning_not_ours.json",
        "line 1: not a JSON object",
        "rerun tvmc tune",
    ),
    Case(
        "tuning-log-bad-record",
        "compile {M}/valid.onnx --tuning-records {D}/tuning_bad_record.json",
        "line 2: a record needs a task and a cost",
        "rerun tvmc tune",
    ),
    Case(
        "tuning-log-bad-cascade-record",
        "compile {M}/valid.onnx --tuning-records {D}/tuning_bad_cascade.json",
        "line 2: a cascade record needs rows",
        "rerun tvmc tune",
    ),
    Case("tuning-log-missing", "compile {M}/valid.onnx --tuning-records {D}/absent.json", "cannot read tuning records"),
    Case("tune-into-corrupt-log", "tune {M}/valid.onnx --trials 1 -o {D}/tuning_random.json", "are corrupt", "rerun tvmc tune"),
    # inputs at run time
    Case("input-wrong-dtype", "run {V} --inputs {D}/wrong_dtype.npz", "'x' is float64[1, 4, 8, 8]", "astype('float32')"),
    Case("input-wrong-shape", "run {V} --inputs {D}/wrong_shape.npz", "float32[1, 4, 9, 8]", "reshape([1, 4, 8, 8])"),
    Case("input-wrong-name", "run {V} --inputs {D}/wrong_name.npz", "missing x; unexpected z", "the model takes x"),
    Case("npz-missing-array", "run {V} --inputs {D}/missing_array.npz", "missing x", "the model takes x"),
    Case("npz-extra-array", "run {V} --inputs {D}/extra_array.npz", "unexpected extra", "the model takes x"),
    Case("npz-extra-array-validate", "validate {V} --inputs {D}/extra_array.npz", "unexpected extra", "the model takes x"),
    Case("npz-pickled-objects", "run {V} --inputs {D}/pickled.npz", "allow_pickle=False", "numpy.savez"),
    Case("npz-random-bytes", "run {V} --inputs {D}/not_npz.npz", "is not an .npz archive", "numpy.savez"),
    Case("npz-missing-file", "run {V} --inputs {D}/absent.npz", "does not exist", "--inputs path"),
    Case("print-top-zero", "run {V} --print-top 0", "--print-top must be at least 1"),
    Case("repeat-zero", "run {V} --print-time --repeat 0", "--repeat and --number must be at least 1"),
    Case("samples-zero", "validate {V} --samples 0", "--samples must be at least 1"),
    # packages
    Case("empty-package", "run {P}/empty.tar", "not a tar archive", "tvmc compile"),
    Case("random-bytes-package", "report {P}/random.tar", "not a tar archive", "tvmc compile"),
    Case("model-as-package", "run {M}/valid.onnx", "not a tar archive", "tvmc compile"),
    Case("truncated-package", "validate {P}/truncated.tar", "truncated", "tvmc compile"),
    Case("dotdot-member", "run {P}/dotdot_member.tar", "'../escaped.txt'", "recompile"),
    Case("absolute-member", "report {P}/absolute_member.tar", "absolute_escaped.txt", "recompile"),
    Case("symlink-member", "validate {P}/symlink_member.tar", "metadata.json must be regular files", "recompile"),
    Case("missing-library", "run {P}/missing_library.tar", "found ['metadata.json', 'model.onnx']", "recompile"),
    Case("tampered-library", "run {P}/tampered_library.tar", "do not match the package metadata", "recompile"),
    Case("tampered-library-report", "report {P}/tampered_library.tar", "do not match the package metadata", "recompile"),
    Case("foreign-library", "run {P}/foreign_library.tar", "library cannot be loaded", "recompile"),
    Case("metadata-not-json", "report {P}/metadata_not_json.tar", "invalid metadata", "recompile"),
    Case("metadata-missing-field", "run {P}/metadata_missing_field.tar", "invalid metadata ('outputs')", "recompile"),
    Case("future-package-format", "report {P}/future_format.tar", "package format 99", "recompile"),
    Case("metadata-wrong-shape", "run {P}/metadata_wrong_shape.tar", "metadata does not match its library", "recompile"),
    Case("metadata-wrong-dtype", "validate {P}/metadata_wrong_dtype.tar", "metadata does not match its library", "recompile"),
    Case("metadata-extra-input", "run {P}/metadata_extra_input.tar", "its library takes inputs ['x']", "recompile"),
    Case("metadata-huge-shape", "run {P}/metadata_huge_shape.tar", "larger than 4 GiB", "--inputs"),
    Case("metadata-negative-shape", "report {P}/metadata_negative_shape.tar", "invalid metadata", "recompile"),
    Case(
        "metadata-invalid-npu-config",
        "run {P}/metadata_bad_config.tar",
        "sram_kib must be a positive integer",
        "metadata_bad_config.tar",
    ),
]


def corpus_module():
    """tests/bad_inputs/make_corpus.py, a script rather than a package module."""
    spec = importlib.util.spec_from_file_location("make_corpus", Path(__file__).parent / "bad_inputs/make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, conv_package) -> Path:
    return corpus_module().make_corpus(tmp_path_factory.mktemp("bad_inputs"), conv_package)


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def _argv(case: Case, places: dict[str, Path]) -> list[str]:
    argv = case.args.split()
    flag = OUTPUTS[argv[0]][0]
    if flag not in argv and not (argv[0] == "compile" and "--output" in argv):
        argv += OUTPUTS[argv[0]]
    return [arg.format(**places) for arg in argv]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_with_documented_exit_and_leaves_nothing(case, corpus, conv_package, forked_tvmc, tmp_path):
    places = {"M": corpus / "models", "D": corpus / "data", "P": corpus / "packages", "V": conv_package, "O": tmp_path}
    argv = _argv(case, places)
    before = _files(corpus)
    try:
        result = forked_tvmc(*argv, timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tvmc {' '.join(argv)} hung for more than {CASE_TIMEOUT} s")
    assert result.returncode == EXIT_BAD_INPUT, result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmc: error: "), result.stderr
    assert case.problem in lines[0] and case.fix in lines[0], lines[0]
    assert "Traceback" not in result.stdout
    assert list(tmp_path.iterdir()) == [], "an output (or a temp file) was left behind"
    # A careless extractor would write "../escaped.txt" beside its temp folder and the absolute member into the corpus.
    assert _files(corpus) == before and not (Path(tempfile.gettempdir()) / "escaped.txt").exists()

    if case.debug:
        debug = forked_tvmc("--debug", *argv, timeout=CASE_TIMEOUT)
        assert debug.returncode == EXIT_BAD_INPUT and "Traceback (most recent call last)" in debug.stderr
        assert debug.stderr.splitlines()[-1] == lines[0]


def test_corpus_readme_lists_every_generated_file(corpus):
    readme = (Path(__file__).parent / "bad_inputs/README.md").read_text()
    generated = {p.name for p in corpus.rglob("*")} - {"models", "data", "packages"}
    assert sorted(name for name in generated if f"`{name}`" not in readme) == []


def test_two_compiles_to_one_output_path_end_with_one_valid_package(corpus, tmp_path):
    """Both finish (each renames a complete temp file onto the path) and the survivor is a whole package."""
    out = tmp_path / "model.tar"
    argv = [
        sys.executable,
        "-m",
        "tvm_npu",
        "compile",
        "--no-quantize",
        "--target",
        "npu/micro",
        str(corpus / "models/valid.onnx"),
        "-o",
        str(out),
    ]
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(process.communicate(timeout=300)[1], process.returncode) for process in processes]
    assert [code for _, code in outcomes] == [0, 0], outcomes
    assert [p.name for p in tmp_path.iterdir()] == ["model.tar"]
    assert read_package(out).metadata.inputs[0].name == "x"
