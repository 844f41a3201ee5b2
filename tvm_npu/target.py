"""The `npu` target: a documented hardware description, its presets, and its TVM tag.

TVM 0.27 cannot register a new target *kind* from Python and rejects unknown target
attributes, so the hardware description lives here, keyed by the target's `model`
attribute, and travels with the compiled package in its metadata. The TVM target
itself is the host LLVM target (compiled code runs on the host CPU) tagged with the
keys `["npu", "cpu"]`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import tvm

from .errors import NpuError
from .host import host_target

DEFAULT_PRESET = "mid"
SUPPORTED_DTYPES = ("int8", "uint8")


@dataclass(frozen=True)
class NpuConfig:
    """An NPU's hardware description, the single input of the performance model.

    Units are the ones people quote: KiB of SRAM, MHz, bytes per cycle.
    """

    name: str
    sram_kib: int  # on-chip scratchpad holding every tile's working set
    mac_rows: int  # the MAC array: mac_rows x mac_cols INT8 MACs per cycle
    mac_cols: int
    dram_bytes_per_cycle: float  # off-chip (DRAM/flash) bandwidth seen by the DMA
    sram_bytes_per_cycle: float  # on-chip bandwidth between SRAM and the MAC array
    clock_mhz: float
    dtypes: tuple[str, ...] = SUPPORTED_DTYPES
    description: str = ""
    source: str = ""  # where the figures come from

    @property
    def sram_bytes(self) -> int:
        return self.sram_kib * 1024

    @property
    def macs_per_cycle(self) -> int:
        return self.mac_rows * self.mac_cols

    @property
    def peak_tops(self) -> float:
        """INT8 tera-operations per second (one MAC = two operations)."""
        return 2 * self.macs_per_cycle * self.clock_mhz * 1e6 / 1e12

    @property
    def target_model(self) -> str:
        """The TVM target's `model` attribute that names this description."""
        return f"npu-{self.name}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"dtypes": list(self.dtypes)}

    @classmethod
    def from_dict(cls, data: dict) -> NpuConfig:
        """The inverse of `to_dict` (a package's metadata round-trips through it)."""
        return cls(**(data | {"dtypes": tuple(data["dtypes"])}))

    def with_overrides(self, overrides: dict, origin: str) -> NpuConfig:
        """A copy with some fields replaced, checked; `origin` names where they came from."""
        config = dataclasses.replace(self, **overrides)
        config.check(origin)
        return config

    def check(self, origin: str) -> None:
        """Raises NpuError naming the first field that cannot describe real hardware."""
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise NpuError(
                f"invalid NPU config from {origin}: name must be letters, digits, '_', '.' or '-', "
                f"got {self.name!r}"
            )
        for name in ("sram_kib", "mac_rows", "mac_cols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise NpuError(
                    f"invalid NPU config from {origin}: {name} must be a positive integer, got {value!r}"
                )
        for name in ("dram_bytes_per_cycle", "sram_bytes_per_cycle", "clock_mhz"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise NpuError(
                    f"invalid NPU config from {origin}: {name} must be a positive number, got {value!r}"
                )
        bad = [d for d in self.dtypes if d not in SUPPORTED_DTYPES]
        if not self.dtypes or bad:
            raise NpuError(
                f"invalid NPU config from {origin}: dtypes must be a non-empty subset of "
                f"{list(SUPPORTED_DTYPES)}, got {list(self.dtypes)}"
            )

    def tvm_target(self, host: dict | None = None) -> tvm.target.Target:
        """The TVM target: the host CPU through LLVM (`host`, from `tvm_npu.host.host_target`; default the
        portable ISA level), tagged as this NPU."""
        tag = f"npu/{self.name}"
        tvm.target.register_tag(
            tag,
            {
                **(host or host_target()),
                "keys": ["npu", "cpu"],
                "model": self.target_model,
                "num-cores": os.cpu_count() or 1,
            },
            override=True,
        )
        return tvm.target.Target(tag)


# Figures are rounded public numbers used for modelling, not claims about any product.
PRESETS: dict[str, NpuConfig] = {
    config.name: config
    for config in (
        NpuConfig(
            name="micro",
            sram_kib=384,
            mac_rows=16,
            mac_cols=16,
            dram_bytes_per_cycle=8.0,
            sram_bytes_per_cycle=16.0,
            clock_mhz=500.0,
            description="MCU-class NPU in the spirit of Arm Ethos-U55-256",
            source=(
                "Arm Ethos-U55 product brief: 256 INT8 MACs/cycle configuration, 64-bit AXI "
                "(8 B/cycle); Vela's Ethos_U55_High_End_Embedded system config: 500 MHz core clock; "
                "384 KiB is a typical Cortex-M55 tensor-arena SRAM"
            ),
        ),
        NpuConfig(
            name="mid",
            sram_kib=1024,
            mac_rows=16,
            mac_cols=32,
            dram_bytes_per_cycle=16.0,
            sram_bytes_per_cycle=32.0,
            clock_mhz=1000.0,
            description="embedded NPU in the spirit of Arm Ethos-U65-512",
            source=(
                "Arm Ethos-U65 product brief: 512 INT8 MACs/cycle, 128-bit AXI (16 B/cycle), "
                "up to 1 GHz; 1 MiB of on-chip SRAM as in Vela's Dedicated_Sram memory mode"
            ),
        ),
        NpuConfig(
            name="large",
            sram_kib=4096,
            mac_rows=64,
            mac_cols=64,
            dram_bytes_per_cycle=64.0,
            sram_bytes_per_cycle=256.0,
            clock_mhz=1400.0,
            description="client-PC NPU in the spirit of the Intel NPU (Core Ultra, NPU 3720) that OpenVINO targets",
            source=(
                "Intel Core Ultra (Meteor Lake) NPU overviews: 2 neural compute engines of 2048 INT8 "
                "MACs (4096/cycle), ~1.4 GHz (~11 INT8 TOPS), 4 MiB on-chip scratchpad (CMX); "
                "64 B/cycle (~90 GB/s) is a share of the LPDDR5x system bandwidth"
            ),
        ),
    )
}

# Fields a user may override with --target-npu-<field> (underscores become dashes).
OVERRIDABLE_FIELDS = (
    "sram_kib",
    "mac_rows",
    "mac_cols",
    "dram_bytes_per_cycle",
    "sram_bytes_per_cycle",
    "clock_mhz",
)


def _preset_name(spec: str) -> str:
    if spec not in PRESETS:
        raise NpuError(
            f"unknown NPU preset {spec!r}; choose one of {', '.join(PRESETS)} "
            f"(e.g. --target npu/{DEFAULT_PRESET})"
        )
    return spec


def resolve_target(
    target: str | NpuConfig = "npu",
    config_file: str | os.PathLike | None = None,
    **overrides,
) -> NpuConfig:
    """Turns `npu`, `npu/<preset>` or an NpuConfig, plus overrides, into a checked NpuConfig.

    Precedence follows tvmc: preset < config file < individual `--target-npu-*` options.
    """
    if isinstance(target, NpuConfig):
        config = target
    else:
        kind, _, preset = target.partition("/")
        if kind != "npu":
            raise NpuError(
                f"unsupported target {target!r}; tvm_npu compiles for 'npu' or 'npu/<preset>' "
                f"with presets {', '.join(PRESETS)}"
            )
        config = PRESETS[_preset_name(preset or DEFAULT_PRESET)]
    if config_file is not None:
        config = _load_config_file(Path(config_file), base=config)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(OVERRIDABLE_FIELDS))
    if unknown:
        raise NpuError(f"unknown NPU config override(s) {', '.join(unknown)}")
    return config.with_overrides(overrides, "--target-npu-* options")


def _load_config_file(path: Path, base: NpuConfig) -> NpuConfig:
    """A JSON object of NpuConfig fields refining `base`, or the preset it names as "base"."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NpuError(f"NPU config file {path} does not exist; check the --target-npu-config path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NpuError(f"NPU config file {path} is not valid JSON ({err}); fix or regenerate it") from None
    if not isinstance(data, dict):
        raise NpuError(f"NPU config file {path} must hold a JSON object of fields, e.g. {{\"sram_kib\": 512}}")
    if "base" in data:
        base = PRESETS[_preset_name(data.pop("base"))]
    fields = {f.name for f in dataclasses.fields(NpuConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise NpuError(
            f"NPU config file {path} has unknown field(s) {', '.join(unknown)}; "
            f"valid fields are base, {', '.join(sorted(fields))}"
        )
    if isinstance(data.get("dtypes"), list):
        data["dtypes"] = tuple(data["dtypes"])
    return base.with_overrides(data, str(path))
