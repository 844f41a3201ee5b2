"""The compile cache (tvm_npu.cache) and compile progress: every test has a cache folder of its own."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import io
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import tvm

import tvm_npu
import tvm_npu.cli
from conftest import make_conv_model
from test_int8_end_to_end import make_small_cnn
from tvm_npu import cache
from tvm_npu.package import read_package
from tvm_npu.target import resolve_target

# Small and unquantized: each compile takes about a second.
FAST = {"target": "npu/micro", "quantize_model": False}


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    folder = tmp_path / "compile_cache"
    monkeypatch.setenv(cache.CACHE_DIR_VARIABLE, str(folder))
    return folder


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored(folder) -> list[str]:
    return sorted(path.name.split(".")[1] for path in folder.iterdir() if path.suffix in (".tar", ".json"))


def test_cache_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_DIR_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "tvm_npu" / "compile"


def test_hit_copies_the_identical_package(conv_model, cache_folder, tmp_path):
    first = tvm_npu.compile(conv_model, tmp_path / "first.tar", cache=True, **FAST)
    second = tvm_npu.compile(conv_model, tmp_path / "second.tar", cache=True, **FAST)
    assert "build" in first.stage_seconds and set(second.stage_seconds) == {"cache"}
    assert sha256(first.package_path) == sha256(second.package_path)
    assert second.metadata.to_dict() == first.metadata.to_dict()
    assert stored(cache_folder) == ["json", "tar"]
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        tvm_npu.load(second.package_path).run({"x": x})["y"], tvm_npu.load(first.package_path).run({"x": x})["y"]
    )


def test_an_unusable_cache_folder_is_said_and_the_compile_goes_on(conv_model, tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(cache.CACHE_DIR_VARIABLE, str(tmp_path / "a_file" / "cache"))
    result = tvm_npu.compile(conv_model, tmp_path / "model.tar", cache=True, **FAST)
    assert "build" in result.stage_seconds
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: cannot use the compile cache") and cache.CACHE_DIR_VARIABLE in line
    read_package(result.package_path)


def test_library_calls_do_not_cache_by_default(conv_model, cache_folder, tmp_path):
    result = tvm_npu.compile(conv_model, tmp_path / "model.tar", **FAST)
    assert "cache" not in result.stage_seconds and not cache_folder.exists()


def test_a_changed_compile_option_misses(conv_model, cache_folder, tmp_path):
    tvm_npu.compile(conv_model, tmp_path / "a.tar", cache=True, **FAST)
    other = tvm_npu.compile(conv_model, tmp_path / "b.tar", cache=True, sparse="off", **FAST)
    assert "build" in other.stage_seconds
    assert len(cache.entries(cache_folder)) == 2


def test_every_input_of_the_key_changes_it(conv_model, tmp_path, monkeypatch):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=np.zeros((2, 1, 4, 8, 8), np.float32))
    records = tmp_path / "records.json"
    records.write_text("{}")
    base = {
        "model": conv_model,
        "output": tmp_path / "a.tar",
        "target": "npu/micro",
        "input_shapes": None,
        "quantize_model": None,
        "calibration_data": calibration,
        "save_quantized": None,
        "seed": 0,
        "allow_cpu_fallback": False,
        "sparse": "auto",
        "cascade": False,
        "tuning_records": records,
        "overflow_fix": "first_layer_only",
    }
    key = cache.cache_key(base)
    assert cache.cache_key({**base, "output": tmp_path / "elsewhere.tar"}) == key
    assert cache.cache_key({**base, "target": resolve_target("npu/micro")}) == key  # the resolved config decides
    changed = {
        "target": "npu/mid",
        "input_shapes": {"x": (2, 4, 8, 8)},
        "quantize_model": False,
        "seed": 1,
        "allow_cpu_fallback": True,
        "sparse": "off",
        "cascade": True,
        "overflow_fix": "enable",
    }
    for name, value in changed.items():
        assert cache.cache_key({**base, name: value}) != key, name
    assert cache.cache_key({**base, "target": resolve_target("npu/micro", sram_kib=128)}) != key
    assert cache.cache_key({**base, "calibration_data": None}) != key

    # The bytes of each input file, not its name or date.
    for name in ("model", "calibration_data", "tuning_records"):
        copy = tmp_path / f"copy_{name}"
        copy.write_bytes(base[name].read_bytes())
        assert cache.cache_key({**base, name: copy}) == key, name
        copy.write_bytes(base[name].read_bytes() + b" ")
        assert cache.cache_key({**base, name: copy}) != key, name
        assert cache.cache_key({**base, name: tmp_path / "missing"}) is None, name

    # Versions and code: TVM's version, tvm_npu's files, the kernels on $TVM_NPU_KERNEL_PATH.
    with monkeypatch.context() as patch:
        patch.setattr(tvm, "__version__", tvm.__version__ + ".other")
        assert cache.cache_key(base) != key
    with monkeypatch.context() as patch:
        patch.setattr(cache, "code_digest", lambda: "0" * 64)
        assert cache.cache_key(base) != key
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "my_kernel.py").write_text("KERNEL = None\n")
    monkeypatch.setenv("TVM_NPU_KERNEL_PATH", str(kernels))
    with_kernel = cache.cache_key(base)
    assert with_kernel != key
    (kernels / "my_kernel.py").write_text("KERNEL = None  # edited\n")
    assert cache.cache_key(base) not in (key, with_kernel)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no seal"])
def test_a_corrupt_entry_is_rebuilt_never_copied(damage, conv_model, cache_folder, tmp_path, capsys):
    tvm_npu.compile(conv_model, tmp_path / "first.tar", cache=True, **FAST)
    (entry,) = cache.entries(cache_folder)
    data = bytearray(entry.package.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        entry.package.write_bytes(bytes(data))
    elif damage == "truncated":
        entry.package.write_bytes(bytes(data[: len(data) // 2]))
    else:
        entry.seal_path.unlink()
    rebuilt = tvm_npu.compile(conv_model, tmp_path / "again.tar", cache=True, **FAST)
    assert "build" in rebuilt.stage_seconds
    assert ("is corrupt" in capsys.readouterr().err) == (damage != "no seal")
    assert entry.info()["sha256"] == sha256(entry.package) == sha256(rebuilt.package_path)
    read_package(rebuilt.package_path)  # whole, and its library loads
    hit = tvm_npu.compile(conv_model, tmp_path / "hit.tar", cache=True, **FAST)
    assert set(hit.stage_seconds) == {"cache"} and sha256(hit.package_path) == sha256(rebuilt.package_path)


def tvmc(*argv) -> int:
    return tvm_npu.cli.main([str(arg) for arg in argv])


def test_tvmc_caches_by_default_and_no_cache_bypasses(conv_model, cache_folder, tmp_path, capsys):
    options = ["--target", "npu/micro", "--no-quantize"]
    assert tvmc("compile", conv_model, "-o", tmp_path / "a.tar", "--no-cache", *options) == 0
    assert not cache_folder.exists()
    assert tvmc("compile", conv_model, "-o", tmp_path / "b.tar", *options) == 0
    assert "copied from the compile cache" not in capsys.readouterr().out
    assert tvmc("compile", conv_model, "-o", tmp_path / "c.tar", *options) == 0
    assert "copied from the compile cache" in capsys.readouterr().out
    assert tvmc("compile", conv_model, "-o", tmp_path / "d.tar", "--no-cache", "--print-pass-times", *options) == 0
    out = capsys.readouterr().out
    assert "copied from the compile cache" not in out and "  build " in out and "  cache " not in out

    assert tvmc("cache", "list") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[-1].startswith("1 entries") and str(conv_model) in listing[0]
    assert tvmc("cache", "clear") == 0
    assert capsys.readouterr().out.startswith("removed 1 entries")
    assert cache.entries(cache_folder) == []
    assert tvmc("cache", "list") == 0
    assert capsys.readouterr().out.startswith("0 entries")


def test_two_concurrent_compiles_share_one_entry(tmp_path, cache_folder):
    model = make_conv_model(tmp_path / "concurrent.onnx", channels=3)
    argv = [sys.executable, "-m", "tvm_npu", "compile", "--no-quantize", "--target", "npu/micro", str(model)]
    processes = [
        subprocess.Popen([*argv, "-o", str(tmp_path / f"{i}.tar")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outcomes = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        outcomes.append((process.returncode, out, err))
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    assert sum("copied from the compile cache" in out for _, out, _ in outcomes) == 1  # the other compiled
    assert stored(cache_folder) == ["json", "tar"]
    assert sha256(tmp_path / "0.tar") == sha256(tmp_path / "1.tar") == sha256(cache.entries(cache_folder)[0].package)
    for i in range(2):
        read_package(tmp_path / f"{i}.tar")


def test_a_compile_waits_for_the_entry_another_compile_is_filling(conv_model, cache_folder, tmp_path):
    """While one compile holds the entry's lock, another blocks on it, then copies what the first stored."""
    filled = tvm_npu.compile(conv_model, tmp_path / "filled.tar", **FAST).package_path
    # The arguments `tvmc compile` below passes to tvm_npu.compile, as its cache sees them.
    call = inspect.signature(tvm_npu.compile).bind(conv_model, tmp_path / "out.tar", **FAST)
    call.apply_defaults()
    del call.arguments["cache"]
    entry = cache.Entry(cache_folder, cache.cache_key(call.arguments))
    cache_folder.mkdir()
    with entry.locked():
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tvm_npu",
                "compile",
                "--no-quantize",
                "--target",
                "npu/micro",
                str(conv_model),
                "-o",
                str(tmp_path / "out.tar"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        inode = f":{entry.lock_path.stat().st_ino} "
        deadline = time.monotonic() + 120
        while not any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines()):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the second compile never waited for the entry's lock"
            time.sleep(0.1)
        shutil.copyfile(filled, entry.package)
        entry.seal({"model": str(conv_model), "target": "micro", "compile_seconds": 0})
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "copied from the compile cache" in out
    assert sha256(tmp_path / "out.tar") == sha256(filled)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_stages_on_a_terminal_and_quiet_silences_it(conv_model, tmp_path, monkeypatch, capsys):
    options = ["--target", "npu/micro", "--no-quantize", "--no-cache"]
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert tvmc("compile", conv_model, "-o", tmp_path / "a.tar", "--print-pass-times", *options) == 0
    shown = [line.split("] ", 1)[1] for line in terminal.getvalue().splitlines() if line.startswith("[")]
    assert shown == ["load", "import", "partition", "plan", "lower", "build", "package"]
    table = capsys.readouterr().out.split("compile stage")[1].splitlines()
    stages = [row.split()[0] for row in table[1:]]
    assert stages[: stages.index("total") + 1] == [*shown, "total"]

    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert tvmc("compile", conv_model, "-o", tmp_path / "b.tar", "-q", *options) == 0
    assert quiet.getvalue() == ""


def test_progress_on_a_real_terminal_shows_a_bar_over_the_layers_being_lowered(tmp_path):
    """`tvmc compile` with stderr on a pseudo-terminal (80 columns: tqdm draws nothing on a 0-column one)."""
    model = make_small_cnn(tmp_path / "cnn.onnx")
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm_npu",
            "compile",
            str(model),
            "-o",
            str(tmp_path / "a.tar"),
            "--target",
            "npu/micro",
            "--no-cache",
        ],
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the compile closed its end
        while chunk := os.read(controller, 1 << 16):
            shown += chunk
    os.close(controller)
    out = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, shown
    stages = re.findall(r"\[ *[0-9.]+ s\] (\w+)", shown.decode())
    assert stages == ["load", "quantize", "import", "partition", "plan", "lower", "build", "package"], shown
    layers = len(read_package(tmp_path / "a.tar", load_library=False).metadata.extra["layers"])
    assert layers > 1 and re.search(rf"lower: 100%\|.*\| {layers}/{layers} ", shown.decode()), shown
    assert out.startswith("compiled ") or "Network summary" in out  # stdout is tvmc's usual report ...
    assert not re.search(r"\[ *[0-9.]+ s\]", out) and "lower:" not in out  # ... the progress went to the terminal


def test_no_progress_when_stderr_is_not_a_terminal(conv_model, tmp_path, capsys):
    assert tvmc("compile", conv_model, "-o", tmp_path / "a.tar", "--target", "npu/micro", "--no-quantize", "--no-cache") == 0
    assert capsys.readouterr().err == ""
