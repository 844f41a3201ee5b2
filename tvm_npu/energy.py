"""Energy per inference from the performance model's counts: pJ per MAC and pJ per byte at each memory level.

Published constants (M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
45 nm, 0.9 V; the table Han et al. reuse in EIE, ISCA 2016):

- an INT8 MAC with an int32 accumulator: 8-bit multiply 0.2 pJ + 32-bit add 0.1 pJ = 0.3 pJ;
- SRAM, per 64-bit read: 10 pJ from 8 KB, 20 pJ from 32 KB, 100 pJ from 1 MB; per byte 1.25, 2.5 and
  12.5 pJ. An SRAM of another size is interpolated linearly in log2(size) between those points (clamped);
- DRAM: 1.3-2.6 nJ per 64-bit access; we charge the low end, 1.3 nJ / 8 B = 162.5 pJ/B (LPDDR-class
  interfaces sit nearer it). Writes cost as reads.

The model counts: MACs (pools and vector operations are not charged: they are a few % of a network's
operations and Horowitz gives no figure for a lookup), SRAM bytes (every byte a tile's compute reads or
writes, `perf.tile_sram_bytes`, plus every byte DMA'd in or out, which lands in or leaves SRAM once) and
the DRAM bytes of the performance model. Where a preset keeps activations in another memory than weights
(the ethos-u55-256 twin: activations in the system SRAM, weights in flash), `NpuConfig.dram_pj_per_byte`
and `weight_pj_per_byte` say what each costs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .target import NpuConfig

MAC_PJ = 0.2 + 0.1  # 8-bit multiply + 32-bit add (Horowitz 2014)
SRAM_PJ_PER_BYTE = ((8 * 1024, 10.0 / 8), (32 * 1024, 20.0 / 8), (1024 * 1024, 100.0 / 8))  # (size, pJ/B)
DRAM_PJ_PER_BYTE = 1300.0 / 8  # 1.3 nJ per 64-bit access, Horowitz's low end


def sram_pj_per_byte(size_bytes: float) -> float:
    """Horowitz's SRAM read energy per byte at `size_bytes`, interpolated in log2(size) and clamped."""
    points = SRAM_PJ_PER_BYTE
    if size_bytes <= points[0][0]:
        return points[0][1]
    for (s0, e0), (s1, e1) in zip(points, points[1:]):
        if size_bytes <= s1:
            t = (math.log2(size_bytes) - math.log2(s0)) / (math.log2(s1) - math.log2(s0))
            return e0 + t * (e1 - e0)
    return points[-1][1]


def energy(macs: int, sram_bytes: float, activation_bytes: float, weight_bytes: float, config: "NpuConfig") -> dict:
    """pJ of one layer (or network): MACs, SRAM traffic, and off-chip traffic of activations and weights."""
    mac = macs * MAC_PJ
    sram = sram_bytes * sram_pj_per_byte(config.sram_bytes)
    dram = activation_bytes * config.dram_pj_per_byte + weight_bytes * config.weight_energy
    total = mac + sram + dram
    return {
        "energy_pj": total,
        "energy_mac_pj": mac,
        "energy_sram_pj": sram,
        "energy_dram_pj": dram,
        "energy_dram_share": dram / total if total else 0.0,
    }
