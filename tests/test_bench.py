"""scripts/bench.py, the source of every published latency: a real --quick run (the default model,
every runtime) writes consistent JSON, Markdown and PNG, and README's Performance section is
exactly what the committed results render to."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", out], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out, json.loads((out / "bench.json").read_text()), result.stdout


def test_quick_run_measures_every_runtime(quick_run):
    _, results, _ = quick_run
    assert results["settings"]["models"] == ["default"] and len(results["models"]) == 1
    entry = results["models"][0]
    rows = entry["runtimes"]
    expected = [r for r in bench.RUNTIMES if r not in entry["skipped"]]
    assert list(rows) == expected and "tvm_npu_int8" in rows and "openvino_int8" in rows and "tvm_fp32" in rows
    for runtime, row in rows.items():
        assert 0 < row["median_ms"] <= row["p90_ms"], runtime
        assert results["settings"]["rounds"] <= row["samples"] <= results["settings"]["repeat"]
        assert row["peak_rss_mib"] > row["before_load_rss_mib"] > 10, runtime  # the child's own high-water mark
        assert row["ratio_to_openvino_int8"] == pytest.approx(row["median_ms"] / rows["openvino_int8"]["median_ms"])
    # What was timed computes the same thing as the reference runtimes.
    assert rows["tvm_npu_int8"]["cosine_vs"] == "openvino_int8" and rows["tvm_npu_int8"]["cosine"] > 0.99
    assert rows["tvm_fp32"]["cosine_vs"] == "openvino_fp32" and rows["tvm_fp32"]["cosine"] > 0.9999
    assert rows["tvm_npu_int8"]["compile_stages_s"]["quantize"] > 0 and rows["tvm_fp32"]["compile_s"] > 0
    assert entry["goals"]["tvm_fp32_over_tvm_npu_int8"] == pytest.approx(
        rows["tvm_fp32"]["median_ms"] / rows["tvm_npu_int8"]["median_ms"]
    )
    assert entry["npu_model"]["cycles"] > 0 and 0 < entry["npu_model"]["utilization"] <= 1


def test_quick_run_profiles_the_int8_package(quick_run):
    profile = quick_run[1]["models"][0]["profile"]
    assert sum(profile["by_kind"].values()) == pytest.approx(profile["total_ms"])
    times = [call["ms"] for call in profile["top"]]
    assert times == sorted(times, reverse=True) and len(times) == bench.PROFILE_TOP
    assert any(call["symbol"].startswith("npu_conv2d_") for call in profile["top"])
    assert any(kind.startswith("NPU kernel npu.conv2d") for kind in profile["by_kind"])
    conv = next(row for row in profile["kernel_families"] if row["family"] == "npu.conv2d")
    assert (
        conv["gmacs"] == pytest.approx(conv["macs"] / conv["ms"] / 1e6)
        and conv["ms"] == profile["by_kind"]["NPU kernel npu.conv2d"]
    )
    assert 0 < conv["share_of_peak"] < 1 and conv["peak_isa"] in {isa for isa, _ in bench.PEAK_MACS_PER_CYCLE}
    assert f"npu.conv2d: {conv['gmacs']:.2f} GMAC/s on the host" in quick_run[2]


def test_quick_run_writes_markdown_and_png_from_the_json(quick_run):
    out, results, stdout = quick_run
    text = (out / "bench.md").read_text()
    assert text == bench.markdown(results) and text in stdout
    for runtime, row in results["models"][0]["runtimes"].items():
        assert f"| default | {runtime} | {bench._ms(row['median_ms'])} | {bench._ms(row['p90_ms'])} |" in text
    png = (out / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    rendered = subprocess.run(
        [sys.executable, SCRIPT, "--from-json", out / "bench.json"], capture_output=True, text=True, timeout=120
    )
    assert rendered.returncode == 0 and rendered.stdout.startswith(text)


def test_readme_performance_section_is_the_committed_results():
    results = json.loads((REPO / "results" / "bench.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme.split(bench.README_BEGIN, 1)[1].split(bench.README_END, 1)[0]
    assert section == "\n" + bench.markdown(results)
    assert results["command"].startswith("python scripts/bench.py") and "--quick" not in results["command"]


def test_bad_arguments_are_one_line_errors(tmp_path):
    for args in (["--models", "nosuchnet"], ["--repeat", "0"], ["--from-json", tmp_path / "missing.json"]):
        result = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("bench.py: error:")


def test_latency_rounds_interleave_and_respect_the_budget():
    calls = []

    def runner(name, seconds):
        def run():
            calls.append(name)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass

        return run, None, None

    samples = bench.measure_latency(
        {"fast": runner("fast", 0.0005), "slow": runner("slow", 0.15)}, repeat=6, rounds=3, budget_s=0.3
    )
    assert len(samples["fast"]) == 6
    assert len(samples["slow"]) == 3  # one per round: each round's share of the budget is 100 ms
    assert np.median(samples["slow"]) >= 150 and np.median(samples["fast"]) < 50
    # Every round: an untimed call, then the timed ones; runtimes alternate round by round.
    assert calls == (["fast"] * 3 + ["slow"] * 2) * 3
