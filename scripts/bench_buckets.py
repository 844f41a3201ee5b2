"""Shape buckets on the real text recogniser ppocr_rec (dynamic width): three width buckets in one package,
each bucket's modelled figures and host time, the padding cost at the bucket boundaries, and how the
valid part of the output compares with OpenVINO on the same input unpadded, into results/buckets.json and
results/buckets.md (the README's "Variable input sizes" table).

    python scripts/bench_buckets.py

Inputs are `--fill-mode image` pictures (a photograph with a caption line) at each width, normalised as
PaddleOCR's recogniser expects (symmetric, [-1, 1]); the pad value is 0, PaddleOCR's own (it pads a batch
of text lines to the widest with zeros after normalisation). For each width three comparisons:
  valid part vs OpenVINO unpadded: `tvmc validate` of the bucketed package at that width (the reference
    runs the bucket's quantized model at the unpadded width, `tvm_npu.buckets.reference_model`);
  bucket vs OpenVINO padded: the same bucket's library against OpenVINO on the padded input (the compiler's
    own error, without the padding);
  float model, padded vs unpadded: OpenVINO on the FP32 source model (the padding's effect on the model
    itself, without quantization or this compiler);
and whether the greedy CTC reading (argmax per column, repeats and blanks dropped) is the same text.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov

import tvm_npu
from tvm_npu.frontend import parse_input_shapes
from tvm_npu.report import bucket_rows
from tvm_npu.runtime import ImageFill, make_inputs
from tvm_npu.validate import validate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import fetch  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results"
MODEL = "ppocr_rec"
SHAPES = "x:[1,3,48,{160,320,640}]"
WIDTHS = (100, 161, 250, 321, 500)  # inside each bucket, and one past each boundary
IMAGE = ImageFill(normalization="symmetric")
HOST_REPEAT = 5


def ctc_text(scores: np.ndarray) -> list[int]:
    """Greedy CTC decoding: the best class per column, repeats merged, blanks (class 0) dropped."""
    best = scores.reshape(-1, scores.shape[-1]).argmax(-1)
    return [int(c) for i, c in enumerate(best) if c and (i == 0 or c != best[i - 1])]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def measure(folder: Path, widths=WIDTHS) -> dict:
    source = fetch(MODEL)
    started = time.perf_counter()
    tvm_npu.compile(source, folder / "rec.tar", input_shapes=parse_input_shapes(SHAPES), cache=True)
    compile_s = time.perf_counter() - started
    model = tvm_npu.load(folder / "rec.tar")
    buckets = bucket_rows(model.metadata)
    for row, bucket in zip(buckets, model.buckets):
        sample = make_inputs(bucket.inputs, "image", 0, IMAGE)
        row["host_ms"] = float(np.median(bucket.benchmark(sample, repeat=HOST_REPEAT).ms))
    core = ov.Core()
    float_model = core.read_model(source)
    float_model.reshape({"x": [1, 3, 48, -1]})
    fp32 = core.compile_model(float_model, "CPU")
    validation = []
    for width in widths:
        view = model.view({"x": (1, 3, 48, width)})
        sample = make_inputs(view.inputs, "image", 0, IMAGE)
        _, padded = model.choose(sample)
        ours = model.run(sample)["softmax_11.tmp_0"]
        unpadded = validate(view, [sample], "CPU")
        in_bucket = validate(model.buckets[view.index], [padded], "CPU")
        reference = core.compile_model(core.read_model(view.onnx_bytes, b""), "CPU")(sample)[0]
        fp32_unpadded, fp32_padded = fp32(sample)[0], fp32(padded)[0][:, : reference.shape[1]]
        (output,) = unpadded.outputs
        validation.append(
            {
                "width": width,
                "bucket": model.bucketing.describe(view.index),
                "columns": int(ours.shape[1]),
                "passed": unpadded.passed,
                "max_abs_error": output.max_abs_error,
                "cosine": output.cosine,
                "same_text": ctc_text(ours) == ctc_text(reference),
                "bucket_vs_openvino_padded": in_bucket.passed,
                "bucket_vs_openvino_padded_cosine": in_bucket.outputs[0].cosine,
                "fp32_padded_vs_unpadded_cosine": cosine(fp32_padded, fp32_unpadded),
                "fp32_padded_vs_unpadded_max_abs": float(np.abs(fp32_padded - fp32_unpadded).max()),
                "fp32_same_text": ctc_text(fp32_padded) == ctc_text(fp32_unpadded),
            }
        )
        print(validation[-1], flush=True)
    return {
        "model": MODEL,
        "input_shapes": SHAPES,
        "compile_s": round(compile_s, 1),
        "openvino": ov.get_version(),
        "buckets": buckets,
        "validation": validation,
    }


def table(results: dict) -> str:
    lines = [
        f'`{results["model"]}` compiled with `--input-shapes "{results["input_shapes"]}"` '
        f"({len(results['buckets'])} buckets, one package, {results['compile_s']:.0f} s):",
        "",
        "| bucket | modelled cycles | DRAM KiB | SRAM peak KiB | host ms |",
        "|---|---|---|---|---|",
    ]
    for row in results["buckets"]:
        lines.append(
            f"| `{row['shapes']}` | {row['cycles']:,.0f} | {row['dram_bytes'] / 1024:,.0f} | "
            f"{row['sram_peak'] / 1024:,.0f} | {row['host_ms']:.1f} |"
        )
    lines += [
        "",
        "| input width | runs in | padded | cycles vs previous bucket | host ms vs previous bucket |",
        "|---|---|---|---|---|",
    ]
    for previous, row in zip(results["buckets"], results["buckets"][1:]):
        boundary = row["boundary"]
        lines.append(
            f"| {boundary['input'][0].split('=')[1]} | `{row['shapes']}` | {100 * boundary['padded_share']:.1f} % | "
            f"{boundary['cycles_over_previous']:.2f}x | {row['host_ms'] / previous['host_ms']:.2f}x |"
        )
    lines += [
        "",
        "| input width | runs in | valid part vs OpenVINO unpadded | cosine | same CTC text | "
        "bucket vs OpenVINO padded | FP32 model padded vs unpadded: cosine, same text |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["validation"]:
        lines.append(
            f"| {row['width']} | `{row['bucket']}` | {'PASS' if row['passed'] else 'FAIL'} | {row['cosine']:.4f} | "
            f"{'yes' if row['same_text'] else 'no'} | {'PASS' if row['bucket_vs_openvino_padded'] else 'FAIL'} "
            f"(cosine {row['bucket_vs_openvino_padded_cosine']:.4f}) | {row['fp32_padded_vs_unpadded_cosine']:.4f}, "
            f"{'yes' if row['fp32_same_text'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tvm_npu_buckets_") as folder:
        results = measure(Path(folder))
    (RESULTS / "buckets.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "buckets.md").write_text(table(results))
    print(table(results))
    print(f"wrote {RESULTS / 'buckets.json'} and {RESULTS / 'buckets.md'}")


if __name__ == "__main__":
    main()
