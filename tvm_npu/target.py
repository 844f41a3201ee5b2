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

from .energy import DRAM_PJ_PER_BYTE, SRAM_PJ_PER_BYTE
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
    mac_rows: int  # the MAC array: mac_rows output pixels x mac_cols output channels
    mac_cols: int
    dram_bytes_per_cycle: float  # off-chip (DRAM/flash) bandwidth seen by the DMA
    sram_bytes_per_cycle: float  # on-chip bandwidth between SRAM and the MAC array
    clock_mhz: float
    dtypes: tuple[str, ...] = SUPPORTED_DTYPES
    # Input channels each MAC array cell reduces per cycle (Ethos-U: 8, its IFM micro-block depth); a
    # depthwise conv or pool has one input channel per output and uses 1 of them. 1: one tap per cycle.
    mac_depth: int = 1
    # Where the weights live when not beside the activations (Vela's Shared_Sram: activations in
    # system SRAM, weights in flash on the other AXI port); 0 = the same memory, at dram_bytes_per_cycle.
    weight_bytes_per_cycle: float = 0.0
    # Read latency of one DMA transfer (Vela's <memory>_read_latency, in NPU cycles); 0 = not modelled.
    dram_latency_cycles: float = 0.0
    weight_latency_cycles: float = 0.0  # 0 with weight_bytes_per_cycle 0: dram_latency_cycles
    # Energy of a byte moved from/to the activations' memory and the weights' (0: as dram_pj_per_byte);
    # tvm_npu/energy.py cites the figures.
    dram_pj_per_byte: float = DRAM_PJ_PER_BYTE
    weight_pj_per_byte: float = 0.0
    description: str = ""
    source: str = ""  # where the figures come from
    # The Vela configuration this preset twins, as its CLI flags (scripts/compare_vela.py runs it).
    vela: str = ""

    @property
    def sram_bytes(self) -> int:
        return self.sram_kib * 1024

    @property
    def macs_per_cycle(self) -> int:
        return self.mac_rows * self.mac_cols * self.mac_depth

    @property
    def peak_tops(self) -> float:
        """INT8 tera-operations per second (one MAC = two operations)."""
        return 2 * self.macs_per_cycle * self.clock_mhz * 1e6 / 1e12

    @property
    def weight_bandwidth(self) -> float:
        """Bytes/cycle the DMA reads weights at (their own memory, else DRAM's)."""
        return self.weight_bytes_per_cycle or self.dram_bytes_per_cycle

    @property
    def weight_latency(self) -> float:
        return self.weight_latency_cycles if self.weight_bytes_per_cycle else self.dram_latency_cycles

    @property
    def weight_energy(self) -> float:
        """pJ per weight byte read from the weights' memory."""
        return self.weight_pj_per_byte or self.dram_pj_per_byte

    @property
    def target_model(self) -> str:
        """The TVM target's `model` attribute that names this description."""
        return f"npu-{self.name}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"dtypes": list(self.dtypes)}

    def hardware(self) -> dict:
        """The fields the performance model reads: two configs equal here plan and cost alike
        (names, descriptions, citations and the Vela twin do not count)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("description", "source", "vela")}

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
            raise NpuError(f"invalid NPU config from {origin}: name must be letters, digits, '_', '.' or '-', got {self.name!r}")
        for name in ("sram_kib", "mac_rows", "mac_cols", "mac_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise NpuError(f"invalid NPU config from {origin}: {name} must be a positive integer, got {value!r}")
        for name in ("dram_bytes_per_cycle", "sram_bytes_per_cycle", "clock_mhz"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise NpuError(f"invalid NPU config from {origin}: {name} must be a positive number, got {value!r}")
        for name in (
            "weight_bytes_per_cycle",
            "dram_latency_cycles",
            "weight_latency_cycles",
            "dram_pj_per_byte",
            "weight_pj_per_byte",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise NpuError(f"invalid NPU config from {origin}: {name} must be a number >= 0, got {value!r}")
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


# micro/mid/large: rounded public numbers used for modelling, not claims about any product; the
# ethos-u* presets take every constant from Vela's configuration files (scripts/compare_vela.py).
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
                "384 KiB is our choice (Vela's Dedicated_Sram_384KB size); 16 B/cycle SRAM is our "
                "assumption (twice the AXI width; no public figure). The Vela-checked twin is ethos-u55-256"
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
                "up to 1 GHz; 1 MiB of SRAM and 32 B/cycle from it are our choices (Vela's Dedicated_Sram "
                "modes size the SRAM at 256, 384 or 512 KiB; no public bandwidth figure). "
                "The Vela-checked twin is ethos-u65-512"
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
                "64 B/cycle (~90 GB/s) is a share of the LPDDR5x system bandwidth; 256 B/cycle SRAM is "
                "our assumption (no public figure)"
            ),
        ),
        # Twins of Vela configurations (ethos-u-vela 5.2.0: ethosu/config_files/Arm/vela.ini and
        # ethosu/vela/architecture_features.py). Vela's memory bandwidth is its AXI port width
        # (U55: 8 B/cycle, U65: 16 B/cycle) times the system config's <memory>_clock_scale.
        NpuConfig(
            name="ethos-u55-256",
            sram_kib=48,
            mac_rows=4,
            mac_cols=8,
            mac_depth=8,
            dram_bytes_per_cycle=8.0,
            sram_bytes_per_cycle=32.0,
            clock_mhz=500.0,
            weight_bytes_per_cycle=1.0,
            dram_latency_cycles=32.0,
            weight_latency_cycles=64.0,
            dram_pj_per_byte=SRAM_PJ_PER_BYTE[-1][1],  # the arena: a ~1 MB system SRAM
            weight_pj_per_byte=DRAM_PJ_PER_BYTE,  # flash: no published figure at hand, charged as DRAM
            description="Arm Ethos-U55-256 in Vela's Ethos_U55_High_End_Embedded system, Shared_Sram memory mode",
            source=(
                "Vela 5.2.0: accelerator ethos-u55-256 (256 MACs/cycle: OFM micro-block 2x2 pixels x 8 "
                "channels, IFM micro-block depth 8, so 4 x 8 x 8; elem_units 8, our vector lanes = mac_cols; "
                "48 SHRAM banks of 1 KiB, the on-chip buffer tiles live in); "
                "Ethos_U55_High_End_Embedded: core_clock 500e6, axi0 Sram "
                "(clock_scale 1.0: 8 B/cycle, read latency 32), axi1 OffChipFlash (clock_scale 0.125: "
                "1 B/cycle, read latency 64); Shared_Sram: activations (arena) in Sram, weights (const) in "
                "flash, so 'DRAM' here is the system SRAM. sram_bytes_per_cycle 32 is Vela's IFM "
                "micro-block (2x2x8 int8 per cycle per core); Vela sets no SHRAM bandwidth"
            ),
            vela="--accelerator-config ethos-u55-256 --system-config Ethos_U55_High_End_Embedded --memory-mode Shared_Sram",
        ),
        NpuConfig(
            name="ethos-u65-512",
            sram_kib=512,
            mac_rows=4,
            mac_cols=16,
            mac_depth=8,
            dram_bytes_per_cycle=3.75,
            sram_bytes_per_cycle=64.0,
            clock_mhz=1000.0,
            dram_latency_cycles=500.0,
            description="Arm Ethos-U65-512 in Vela's Ethos_U65_High_End system, Dedicated_Sram_512KB memory mode",
            source=(
                "Vela 5.2.0: accelerator ethos-u65-512 (2 cores of 256 MACs/cycle, each 2x2 pixels x 8 "
                "channels x IFM depth 8, so 4 x 16 x 8 side by side on output channels; elem_units 8 per "
                "core); Ethos_U65_High_End: "
                "core_clock 1e9, axi1 Dram (clock_scale 0.234375 x 16 B/cycle = 3.75 B/cycle, read latency "
                "500), axi0 Sram (16 B/cycle); Dedicated_Sram_512KB: activations and weights in DRAM, a "
                "512 KiB SRAM (arena_cache_size 524288) caching them. sram_bytes_per_cycle 64 is Vela's IFM "
                "micro-block (2x2x8 int8 per cycle) times 2 cores"
            ),
            vela="--accelerator-config ethos-u65-512 --system-config Ethos_U65_High_End --memory-mode Dedicated_Sram_512KB",
        ),
    )
}

# Fields a user may override with --target-npu-<field> (underscores become dashes).
OVERRIDABLE_FIELDS = (
    "sram_kib",
    "mac_rows",
    "mac_cols",
    "mac_depth",
    "dram_bytes_per_cycle",
    "sram_bytes_per_cycle",
    "clock_mhz",
)


def _preset_name(spec: str) -> str:
    if spec not in PRESETS:
        raise NpuError(f"unknown NPU preset {spec!r}; choose one of {', '.join(PRESETS)} (e.g. --target npu/{DEFAULT_PRESET})")
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
                f"unsupported target {target!r}; tvm_npu compiles for 'npu' or 'npu/<preset>' with presets {', '.join(PRESETS)}"
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
        raise NpuError(f'NPU config file {path} must hold a JSON object of fields, e.g. {{"sram_kib": 512}}')
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
