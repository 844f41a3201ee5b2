import json

import pytest
import tvm

from tvm_npu import PRESETS, NpuError, resolve_target
from tvm_npu.target import DEFAULT_PRESET, NpuConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_documented_and_valid(name):
    config = PRESETS[name]
    config.check("preset")
    assert config.description and config.source
    assert resolve_target(f"npu/{name}") == config


def test_presets_span_mcu_to_client_class():
    macs = [PRESETS[n].macs_per_cycle for n in ("micro", "mid", "large")]
    sram = [PRESETS[n].sram_kib for n in ("micro", "mid", "large")]
    assert macs == sorted(macs) and sram == sorted(sram)
    assert PRESETS["micro"].macs_per_cycle == 256


def test_plain_npu_is_the_default_preset():
    assert resolve_target("npu") == PRESETS[DEFAULT_PRESET]


def test_tvm_target_is_a_tagged_host_llvm_target():
    target = PRESETS["micro"].tvm_target()
    assert target.kind.name == "llvm"
    assert list(target.keys) == ["npu", "cpu"]
    assert target.attrs["model"] == "npu-micro"
    assert tvm.target.Target("npu/micro").attrs["model"] == "npu-micro"


def test_option_overrides_win_over_config_file_over_preset(tmp_path):
    config_file = tmp_path / "my_npu.json"
    config_file.write_text(json.dumps({"sram_kib": 2048, "clock_mhz": 800, "name": "mine"}))
    config = resolve_target("npu/micro", config_file, sram_kib=512)
    assert (config.sram_kib, config.clock_mhz, config.name) == (512, 800, "mine")
    assert config.mac_rows == PRESETS["micro"].mac_rows


def test_config_file_can_name_its_base(tmp_path):
    config_file = tmp_path / "big.json"
    config_file.write_text(json.dumps({"base": "large", "sram_kib": 8192}))
    config = resolve_target("npu/micro", config_file)
    assert config.macs_per_cycle == PRESETS["large"].macs_per_cycle and config.sram_kib == 8192


def test_config_round_trips_through_dict():
    config = PRESETS["mid"]
    assert NpuConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "target, overrides, message",
    [
        ("npu", {"sram_kib": 0}, "sram_kib must be a positive integer"),
        ("npu", {"clock_mhz": float("nan")}, "clock_mhz must be a positive number"),
    ],
)
def test_invalid_targets_are_refused(target, overrides, message):
    with pytest.raises(NpuError, match=message):
        resolve_target(target, **overrides)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "must hold a JSON object"),
        ('{"dtypes": ["float32"]}', "dtypes must be a non-empty subset"),
        ('{"name": "has space"}', "name must be"),
    ],
)
def test_invalid_config_files_are_refused(tmp_path, content, message):
    config_file = tmp_path / "bad.json"
    config_file.write_text(content)
    with pytest.raises(NpuError, match=message):
        resolve_target("npu", config_file)
