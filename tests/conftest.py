"""Shared fixtures: compiled packages are built once per session (TVM builds are slow)."""

from __future__ import annotations

import importlib.util
import multiprocessing
import multiprocessing.forkserver
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvm_npu
import tvm_npu.cli
from tvm_npu.cache import CACHE_DIR_VARIABLE
from tvm_npu.validate import int8_path


@pytest.fixture(scope="session", autouse=True)
def session_compile_cache(tmp_path_factory):
    """`tvmc compile` caches by default: the suite's tvmc processes share a fresh cache folder of their own, so
    they test the default path without reading or filling the user's cache (library calls do not cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_VARIABLE, str(tmp_path_factory.mktemp("compile_cache")))
        yield


def run_tvmc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the real console entry point in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "tvm_npu", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tvmc_in_child(argv: list[str], stdout: Path, stderr: Path) -> None:
    """A forked child's body: the `tvmc` entry point with file descriptors 1 and 2 (TVM's native logging
    included) on files, exiting with the CLI's code."""
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    code = tvm_npu.cli.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


@pytest.fixture(scope="session")
def forked_tvmc(tmp_path_factory):
    """`run(*args, timeout=60)`: `tvmc ARGS` in its own process, forked from a server that imported tvm_npu once.

    Each call is still a separate process running the console script's function (`tvm_npu.cli:main`), so
    exit codes, stderr, hangs and signals are the user's; it skips only the ~2 s of interpreter start and
    imports that `run_tvmc` pays per call. A hang raises subprocess.TimeoutExpired; a signal gives a
    negative returncode.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["conftest"])
    # Python 3.11's fork server imports its preload before it applies our sys.path: give it this folder.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), saved]))
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    logs = tmp_path_factory.mktemp("forked_tvmc")
    stdout, stderr = logs / "stdout", logs / "stderr"

    def run(*args, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [str(arg) for arg in args]
        process = context.Process(target=_tvmc_in_child, args=(argv, stdout, stderr))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["tvmc", *argv], timeout)
        return subprocess.CompletedProcess(["tvmc", *argv], process.exitcode, stdout.read_text(), stderr.read_text())

    return run


def script_module(name: str):
    """scripts/NAME.py imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_conv_model(path: Path, batch: int | str = 1, channels: int = 4) -> Path:
    """A tiny Conv+Relu model; a str `batch` makes the batch dimension dynamic."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, channels, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["y"]),
        ],
        "tiny_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, 8, 8])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def conv_model(tmp_path_factory) -> Path:
    return make_conv_model(tmp_path_factory.mktemp("models") / "conv.onnx")


@pytest.fixture(scope="session")
def conv_package(conv_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packages") / "conv.tar"
    tvm_npu.compile(conv_model, output=out, target="npu/micro", quantize_model=False)
    return out


# The two int8 paths of a CPU reference: VNNI (exact int32 sums) and without VNNI (saturating int16
# pair sums), taken here by capping OpenVINO's oneDNN at AVX2 (`reference_isa`, a child process).
INT8_PATHS = {"vnni": None, "avx2": "AVX2"}


@pytest.fixture(params=list(INT8_PATHS))
def reference_isa(request) -> str | None:
    """The oneDNN ISA cap for OpenVINO references: each test runs on both int8 paths. The VNNI path is
    reported as not run (skipped) where this CPU, or this process's $ONEDNN_MAX_CPU_ISA, lacks it."""
    path = int8_path("OpenVINO")
    if request.param == "vnni" and not path.exact:
        pytest.skip(f"the VNNI int8 path cannot run here: {path.reason}")
    return INT8_PATHS[request.param]
