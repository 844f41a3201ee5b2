"""The conformance harness over every registered NPU kernel (tvm_npu.conformance), with no per-kernel code.

Each kernel's examples (one-operator QDQ ONNX models, `NpuKernel.examples`) are checked for landing on
the kernel, bit-exactness of the default and every SRAM-tiled schedule against the kernel's NumPy
reference, the proven SRAM footprint and the performance model's invariants on every preset, and
agreement with OpenVINO on the same ONNX file. The default run uses seed 0; `-m slow` sweeps more seeds.
Kernels on $TVM_NPU_KERNEL_PATH are included (CONTRIBUTING.md).
"""

from __future__ import annotations

from functools import cache

import pytest

from tvm_npu import conformance
from tvm_npu.registry import kernel, kernels


@cache
def _case(name: str, seed: int, index: int) -> conformance.Case:
    npu_kernel = kernel(name)
    return conformance.prepare(npu_kernel, conformance.examples(npu_kernel, seed)[index])


def _params(seeds):
    found = []
    for npu_kernel, seed, index in conformance.cases(seeds):
        example = conformance.examples(npu_kernel, seed)[index]
        found.append(pytest.param(npu_kernel.name, seed, index, id=f"{npu_kernel.name}-seed{seed}-{example.name}"))
    return found


def test_every_kernel_declares_examples_and_limits():
    for npu_kernel in kernels():
        assert npu_kernel.examples is not None, f"{npu_kernel.name} declares no examples (CONTRIBUTING.md)"
        assert npu_kernel.limits, f"{npu_kernel.name} declares no limits for SUPPORTED_OPS.md (CONTRIBUTING.md)"


@pytest.mark.parametrize("name, seed, index", _params(conformance.DEFAULT_SEEDS))
def test_lands_on_kernel_and_default_schedule_is_exact(name, seed, index):
    conformance.check_default(_case(name, seed, index))


@pytest.mark.parametrize("name, seed, index", _params(conformance.DEFAULT_SEEDS))
def test_every_preset_plans_proves_and_stays_exact(name, seed, index):
    print("\n".join(conformance.check_presets(_case(name, seed, index))))


@pytest.mark.parametrize("isa", list(conformance.HOST_ISAS))
@pytest.mark.parametrize(
    "name, seed, index", [p for p in _params(conformance.DEFAULT_SEEDS) if p.values[0] in conformance.MAC_KERNELS]
)
def test_mac_kernels_are_exact_built_for_each_host_isa(name, seed, index, isa):
    """The portable build is what the other checks run; the ISA levels this CPU has are checked here, and
    the ones it lacks are reported as not run."""
    missing = conformance.host_isa_missing(isa)
    if missing:
        pytest.skip(f"{isa}: this CPU lacks {', '.join(missing)}")
    print(conformance.check_host_isa(_case(name, seed, index), isa))


@pytest.mark.parametrize("name, seed, index", _params(conformance.DEFAULT_SEEDS))
def test_compiled_example_matches_openvino(name, seed, index, reference_isa):
    print(conformance.check_openvino(_case(name, seed, index), reference_isa))


@pytest.mark.slow
@pytest.mark.parametrize("name, seed, index", _params(conformance.SWEEP_SEEDS))
def test_sweep(name, seed, index):
    case = _case(name, seed, index)
    conformance.check_default(case)
    conformance.check_presets(case)
    for isa in (None, "AVX2"):  # both int8 paths (on a CPU without VNNI both are the saturating one)
        conformance.check_openvino(case, isa)
