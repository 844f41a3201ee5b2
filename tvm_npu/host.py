"""The host CPU a package's library runs on: the instruction set it is built for (`--target-host`), what
that requires of a CPU, and whether this machine has it.

The default is the portable level `x86-64-v3` (AVX2, FMA, BMI2, F16C, MOVBE): every x86-64 CPU since Intel
Haswell (2013) and AMD Zen (2017) has it, CI's Zen 3 included, and it is the first level with 256-bit integer
SIMD (the int8 kernels' vpmaddwd path). `x86-64-v4` (AVX-512) would leave out Zen 3 and Intel's client CPUs
since Alder Lake. `--target-host` selects more: `native` (this machine's exact CPU, as packages were built
before), a level (`x86-64-v4`), an LLVM CPU name (`znver4`), or tvmc's `llvm -mcpu=znver4 -mattr=+avxvnni`.
A package records the ISA features it needs (`required_isa`), and `check_host` refuses to load it on a CPU
lacking any of them (its code would die of SIGILL mid-inference).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import tvm

from .errors import NpuError

PORTABLE_X86 = "x86-64-v3"
NATIVE = "native"

# The instruction-set features a library can need, by LLVM's name, and how Linux's /proc/cpuinfo spells each
# (LLVM's other features are tuning hints, not instructions).
ISA_FEATURES = {
    "sse3": "pni",
    "ssse3": "ssse3",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "popcnt": "popcnt",
    "cx16": "cx16",
    "sahf": "lahf_lm",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "lzcnt": "abm",
    "movbe": "movbe",
    "xsave": "xsave",
    "aes": "aes",
    "pclmul": "pclmulqdq",
    "sha": "sha_ni",
    "adx": "adx",
    "gfni": "gfni",
    "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq",
    "avxvnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512cd": "avx512cd",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512ifma": "avx512ifma",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
}

CPUINFO = Path("/proc/cpuinfo")  # what `host_features` reads; a test points it at a fixture of another CPU


def host_target(spec: str | None = None) -> dict:
    """The LLVM target (a TVM target dict) for `--target-host` `spec`; None: the portable default."""
    system = tvm.target.codegen.llvm_get_system_cpu()
    if spec is None:
        spec = PORTABLE_X86 if tvm.target.codegen.llvm_get_system_triple().startswith("x86_64") else NATIVE
    words = shlex.split(spec)
    if words and words[0] == "llvm":
        options = dict(word.lstrip("-").partition("=")[::2] for word in words[1:])
        unknown = sorted(set(options) - {"mcpu", "mattr", "mtriple"})
        if unknown or "mcpu" not in options:
            raise NpuError(
                f"--target-host {spec!r}: give -mcpu (and optionally -mattr, -mtriple), not "
                f"{', '.join('-' + u for u in unknown) or 'no -mcpu'}; e.g. 'llvm -mcpu=znver4'"
            )
        cpu = options["mcpu"]
    elif len(words) == 1:
        cpu, options = words[0], {}
    else:
        raise NpuError(
            f"--target-host {spec!r} is not a CPU; use {PORTABLE_X86}, x86-64-v4, native, an LLVM CPU "
            "name (znver4) or 'llvm -mcpu=znver4 -mattr=+avxvnni'"
        )
    cpu = system if cpu == NATIVE else cpu
    if not tvm.target.codegen.llvm_is_valid_cpu(cpu, tvm.target.codegen.llvm_get_system_triple()):
        raise NpuError(
            f"--target-host: LLVM knows no CPU {cpu!r}; use {PORTABLE_X86}, x86-64-v4, native or a CPU "
            "name such as znver3, znver4, skylake-avx512, sapphirerapids"
        )
    target = {"kind": "llvm", "mcpu": cpu}
    if options.get("mattr"):
        target["mattr"] = options["mattr"].split(",")
    if options.get("mtriple"):
        target["mtriple"] = options["mtriple"]
    return target


def required_isa(target: dict) -> list[str]:
    """The ISA features (LLVM names) a library built for `target` may use: its CPU's and its -mattr's."""
    features = set(tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(target)))
    return sorted(features & set(ISA_FEATURES))


def host_features() -> frozenset[str]:
    """The ISA features (LLVM names) this machine's CPU has: /proc/cpuinfo's flags (what the kernel enables,
    so also inside a VM that hides some), else LLVM's view of the host CPU."""
    try:
        flags = next(line for line in CPUINFO.read_text().splitlines() if line.startswith("flags")).split(":")[1]
    except (OSError, StopIteration, IndexError):
        native = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
        return frozenset(required_isa(native))
    present = set(flags.split())
    return frozenset(name for name, flag in ISA_FEATURES.items() if flag in present)


def missing_isa(required: list[str]) -> list[str]:
    """Which of `required` this machine's CPU lacks."""
    have = host_features()
    return [feature for feature in required if feature not in have]


def check_host(metadata, origin: str) -> None:
    """Raises NpuError (exit 2) when this CPU lacks an ISA feature the package's library needs."""
    missing = missing_isa(metadata.target_isa)
    if missing:
        raise NpuError(
            f"{origin} was built for CPU {metadata.target.get('mcpu')} and needs {', '.join(missing)}, which this "
            f"CPU lacks; recompile it with `tvmc compile --target-host {PORTABLE_X86}` (portable) or "
            f"`--target-host {NATIVE}` on this machine"
        )
