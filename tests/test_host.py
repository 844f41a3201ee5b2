"""The host CPU a package is built for (`--target-host`) and the check before its library loads."""

from __future__ import annotations

from pathlib import Path

import pytest

import tvm_npu
from tvm_npu import host
from tvm_npu.errors import NpuError
from tvm_npu.package import read_package

ZEN3 = Path(__file__).parent / "fixtures" / "cpuinfo_zen3.txt"  # CI's AVX2-only CPU: no AVX-512, no VNNI
BEYOND_THIS_HOST = "sapphirerapids"  # AMX and AVX512-FP16: few machines have them


@pytest.fixture(scope="session")
def beyond_package(conv_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packages") / "sapphirerapids.tar"
    tvm_npu.compile(conv_model, output=out, target="npu/micro", quantize_model=False, target_host=BEYOND_THIS_HOST)
    return out


def test_default_package_is_portable_x86_64_v3(conv_package, monkeypatch):
    metadata = read_package(conv_package, load_library=False).metadata
    assert metadata.target["mcpu"] == host.PORTABLE_X86
    assert {"avx2", "fma", "bmi2"} <= set(metadata.target_isa)
    assert not [f for f in metadata.target_isa if f.startswith(("avx512", "amx")) or "vnni" in f]
    monkeypatch.setattr(host, "CPUINFO", ZEN3)
    assert host.missing_isa(metadata.target_isa) == []
    tvm_npu.load(conv_package)  # loads (and would run) on a Zen 3


def test_package_for_a_richer_cpu_refuses_to_load_on_zen3(beyond_package, monkeypatch):
    monkeypatch.setattr(host, "CPUINFO", ZEN3)
    with pytest.raises(NpuError) as caught:
        tvm_npu.load(beyond_package)
    message = str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in message
    assert f"built for CPU {BEYOND_THIS_HOST} and needs " in message and "avx512f" in message and "avx512vnni" in message
    assert f"--target-host {host.PORTABLE_X86}" in message


def test_tvmc_run_on_a_cpu_lacking_the_package_isa_exits_2(beyond_package, forked_tvmc):
    """The real check, on this machine's own /proc/cpuinfo."""
    missing = host.missing_isa(read_package(beyond_package, load_library=False).metadata.target_isa)
    if not missing:
        pytest.skip(f"this CPU has every feature of {BEYOND_THIS_HOST} (AMX, AVX512-FP16): nothing to refuse")
    result = forked_tvmc("run", beyond_package, "--fill-mode", "zeros")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("tvmc: error: ") and ", ".join(missing) in line and "recompile it with" in line


def test_target_host_forms():
    assert host.host_target("llvm -mcpu=x86-64-v3 -mattr=+avxvnni") == {
        "kind": "llvm",
        "mcpu": "x86-64-v3",
        "mattr": ["+avxvnni"],
    }
    assert "avxvnni" in host.required_isa(host.host_target("llvm -mcpu=x86-64-v3 -mattr=+avxvnni"))
    assert "avx512vnni" in host.required_isa(host.host_target("znver4"))
    for bad in ("pentium9", "llvm -mcpu=znver4 -opt-level=3", "znver4 extra"):
        with pytest.raises(NpuError, match="--target-host"):
            host.host_target(bad)


def test_tvmc_compile_rejects_an_unknown_target_host(conv_model, tmp_path, forked_tvmc):
    result = forked_tvmc("compile", conv_model, "--target-host", "pentium9", "-o", tmp_path / "m.tar")
    assert result.returncode == 2 and not (tmp_path / "m.tar").exists()
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "LLVM knows no CPU 'pentium9'" in result.stderr
