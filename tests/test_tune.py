"""`tvmc tune`: meta_schedule + XGBoost over NPU tilings (and, with --cascade, cascade band heights), with
each runner that runs in CI, durable resumable records, and `tvmc compile --tuning-records` building outputs
identical to the untuned build."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvm_npu
from tvm_npu import cli
from tvm_npu.cascade import band_heights, default_band
from tvm_npu.perf import cascade_cost, layer_cost
from tvm_npu.tiling import Geometry, Tiles, cascade_footprint, footprint, inner_trips, outer_trips
from tvm_npu.plan import feasible, task_key
from tvm_npu.records import TuningLog, best_records, read_log
from tvm_npu.report import report
from tvm_npu.runtime import make_inputs
from tvm_npu.target import resolve_target
from tvm_npu.tune import tune
from tvm_npu.zoo import default_model_path

TARGET = "npu/micro"


def make_conv_chain_model(path: Path) -> Path:
    """conv 4->8 stride 2, then three identical conv 8->8 layers (NNCF leaves the last one's output in float,
    so it runs on the CPU): two distinct tuning tasks, one shared by two NPU layers; a chain of three NPU
    convs, so two cascadable pairs (conv0 -> conv1, conv1 -> conv2) competing for conv1."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape).astype(np.float32) * 0.3 for shape in ((8, 4, 3, 3),) + ((8, 8, 3, 3),) * 3]
    nodes, x = [], "x"
    for i in range(4):
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[2 - (i > 0)] * 2),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "conv_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 32, 32])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 8, 16, 16])],
        [onnx.numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_conv_chain_model(tmp_path_factory.mktemp("tune") / "conv_chain.onnx")


@pytest.fixture(scope="module")
def model_log(model, tmp_path_factory):
    log = tmp_path_factory.mktemp("tune") / "model.json"
    result = tune(model, log, TARGET, trials=10, runner="npu-model", seed=3, progress=False)
    return log, result


@pytest.fixture(scope="module")
def untuned_outputs(model, tmp_path_factory):
    package = tvm_npu.compile(model, tmp_path_factory.mktemp("tune") / "untuned.tar", TARGET).package_path
    compiled = tvm_npu.load(package)
    inputs = make_inputs(compiled.inputs, "random", 7)
    return inputs, compiled.run(inputs)


def records_by_task(log: Path) -> dict[str, list[dict]]:
    _, records = read_log(log)
    tasks: dict[str, list[dict]] = {}
    for record in records:
        tasks.setdefault(record["task"], []).append(record)
    return tasks


def measured_or_rejected(record: dict) -> bool:
    """A real measurement, or a tiling the footprint proof rejected before it was built."""
    if record["cost"] is None:
        return record["error"].startswith("NpuError: sram: the lowered TIR allocates")
    return record["cost"] > 0


def geometry(fields: dict) -> Geometry:
    return Geometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def assert_tuned_build_is_exact(model, log, untuned_outputs, tmp_path) -> dict:
    """Compiles with the records; every tiled layer uses its task's best tiles and the outputs are bit-identical."""
    # Cascading would replace a fused pair's tilings by its row bands: off, every tuned tiling shows.
    result = tvm_npu.compile(model, tmp_path / "tuned.tar", TARGET, tuning_records=log, cascade=False)
    best = {
        task: min((r for r in rs if r["cost"] is not None), key=lambda r: r["cost"]) for task, rs in records_by_task(log).items()
    }
    layers = [layer for layer in result.metadata.extra["layers"] if layer["tiles"] is not None]
    assert layers
    for layer in layers:
        assert layer["tuned"] and layer["tiles"] == best[task_key(layer["kernel"], geometry(layer["geometry"]))]["tiles"]
    inputs, expected = untuned_outputs
    outputs = tvm_npu.load(result.package_path).run(inputs)
    for name, value in expected.items():
        np.testing.assert_array_equal(outputs[name], value)
    return result.metadata.extra


def test_npu_model_runner_scores_every_candidate_once_with_the_model(model_log):
    log, result = model_log
    head, _ = read_log(log)
    config = resolve_target(TARGET)
    assert head["runner"] == "npu-model" and head["seed"] == 3 and head["target"] == TARGET
    tasks = records_by_task(log)
    assert len(tasks) == 2 and [t.layers for t in result.tasks] == [1, 2]  # the two identical convs share a task
    for key, records in tasks.items():
        tiles = [json.dumps(r["tiles"], sort_keys=True) for r in records]
        assert len(tiles) == len(set(tiles)) == 10  # distinct candidates, the default one first
        assert records[0].get("default") and not any(r.get("default") for r in records[1:])
        for r in records:  # scored by the model, or rejected by the footprint proof before scoring
            assert measured_or_rejected(r)
            if r["cost"] is not None:
                assert r["cost"] == pytest.approx(r["cycles"] / (config.clock_mhz * 1e6))
    for task in result.tasks:
        assert task.best_cost <= task.default_cost and task.trials == 10
    assert "speedup" in result.table()


def test_records_are_the_feasible_tilings_and_match_the_model(model_log):
    log, result = model_log
    config = resolve_target(TARGET)
    for key, records in records_by_task(log).items():
        g = geometry(json.loads(key.split(" ", 1)[1]))
        space = feasible(g, config)
        for r in records:
            tiles = Tiles(**r["tiles"])
            assert tiles in space  # never an infeasible candidate
            assert r["cycles"] == layer_cost(g, tiles, config).cycles


def test_the_space_has_every_knob_and_the_host_knobs_only_for_host_runners(model_log):
    log, _ = model_log
    config = resolve_target(TARGET)
    for key in records_by_task(log):
        g = geometry(json.loads(key.split(" ", 1)[1]))
        model_space, host_space = feasible(g, config), feasible(g, config, host=True)
        assert {t.double_buffer for t in model_space} == {True, False}
        assert {(t.parallel, t.vectorize) for t in model_space} == {(True, True)}
        assert {(t.parallel, t.vectorize) for t in host_space} == {(p, v) for p in (True, False) for v in (True, False)}
        assert set(model_space) <= set(host_space) and len(set(host_space)) == len(host_space)
        for t in host_space:  # a knob that changes nothing is no knob: no two candidates build the same kernel
            assert t.double_buffer or inner_trips(g, t) > 1
            assert t.parallel or outer_trips(g, t) > 1
            assert sum(footprint(g, t).values()) <= config.sram_bytes


def test_compile_applies_every_knob_off_exactly(model, model_log, untuned_outputs, tmp_path):
    """Records with double buffering, the parallel loop and SIMD lanes all off build a different kernel
    per layer (single-buffered in SRAM, as the proof shows) with the same outputs."""
    log, _ = model_log
    head, *records = log.read_text().splitlines()
    plain = tmp_path / "plain.json"
    off = {"double_buffer": False, "parallel": False, "vectorize": False}
    plain.write_text(
        "\n".join([head, *(json.dumps(json.loads(r) | {"tiles": json.loads(r)["tiles"] | off}) for r in records)]) + "\n"
    )
    extra = assert_tuned_build_is_exact(model, plain, untuned_outputs, tmp_path)
    for layer in extra["layers"]:
        if layer["tiles"] is not None:
            assert (
                layer["sram_proven"]
                == layer["sram_planned"]
                == sum(footprint(geometry(layer["geometry"]), Tiles(**layer["tiles"])).values())
            )


def test_same_seed_same_records(model, model_log, tmp_path):
    log, _ = model_log
    again = tmp_path / "again.json"
    tune(model, again, TARGET, trials=10, runner="npu-model", seed=3, progress=False)
    assert again.read_bytes() == log.read_bytes()


def test_resume_continues_and_drops_a_cut_record(model, tmp_path):
    log = tmp_path / "resume.json"
    tune(model, log, TARGET, trials=4, seed=1, progress=False)
    first = log.read_text()
    with open(log, "a") as stream:
        stream.write('{"task": "cut by a kill", "ti')  # what a SIGKILL mid-write leaves
    result = tune(model, log, TARGET, trials=7, seed=1, progress=False)
    assert log.read_text().startswith(first)
    assert [t.new_trials for t in result.tasks] == [3, 3]
    for records in records_by_task(log).values():
        tiles = [json.dumps(r["tiles"], sort_keys=True) for r in records]
        assert len(tiles) == len(set(tiles)) == 7
    result = tune(model, log, TARGET, trials=7, seed=1, progress=False)  # nothing left to do
    assert [t.new_trials for t in result.tasks] == [0, 0]


def test_resume_refuses_another_runs_log(model, model_log, tmp_path):
    log, _ = model_log
    with pytest.raises(tvm_npu.NpuError, match="another tuning run.*seed"):
        tune(model, log, TARGET, trials=10, seed=4, progress=False)


def test_compile_applies_npu_model_records_exactly(model, model_log, untuned_outputs, tmp_path):
    log, result = model_log
    extra = assert_tuned_build_is_exact(model, log, untuned_outputs, tmp_path)
    tuned_cycles = sum(t.best_cycles * t.layers for t in result.tasks)
    assert sum(r["cycles"] for r in extra["performance"]["layers"] if "(tuned)" in r["tiles"]) == pytest.approx(tuned_cycles)


def test_foreign_and_corrupt_records(model, model_log, tmp_path, capsys):
    log, _ = model_log
    result = tvm_npu.compile(model, tmp_path / "mid.tar", "npu/mid", tuning_records=log)
    assert "warning: ignoring tuning records" in capsys.readouterr().out
    assert not any(layer["tuned"] for layer in result.metadata.extra["layers"])
    bad = tmp_path / "bad.json"
    bad.write_text(log.read_text().splitlines()[0] + "\n{not json\n")
    code = cli.main(["compile", str(model), "-o", str(tmp_path / "x.tar"), "--target", TARGET, "--tuning-records", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "corrupt (line 2" in err
    assert not (tmp_path / "x.tar").exists()


def test_records_whose_tasks_match_no_layer_are_reported(model, model_log, tmp_path, capsys):
    """Records of this very model whose layer geometry has changed since (another tvm_npu) must not
    leave layers untuned without a word."""
    log, _ = model_log
    head, *records = log.read_text().splitlines()
    stale = tmp_path / "stale.json"
    stale.write_text("\n".join([head, *(line.replace("in_h", "in_h_before") for line in records)]) + "\n")
    result = tvm_npu.compile(model, tmp_path / "stale.tar", TARGET, tuning_records=stale, cascade=False)
    assert "match no layer of this model" in capsys.readouterr().out
    assert not any(layer["tuned"] for layer in result.metadata.extra["layers"])


def _tune_command(model: Path, log: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tvm_npu", "tune", str(model), "-o", str(log), "--target", TARGET, *args]


def _records(log: Path) -> int:
    return max(0, log.read_text().count("\n") - 1) if log.exists() else 0


def _signal_after_records(command: list[str], log: Path, records: int, signum: int) -> tuple[int, str]:
    """Runs a tuner until `log` holds `records` records, sends it `signum`; (its exit code, its stderr)."""
    tuner = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while _records(log) < records and tuner.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert tuner.poll() is None, "the tuner ended before the signal"
        tuner.send_signal(signum)
        _, err = tuner.communicate(timeout=120)
    finally:
        if tuner.poll() is None:
            tuner.kill()
            tuner.wait()
    return tuner.returncode, err


def test_a_second_tuner_on_the_same_log_is_refused(model, model_log, tmp_path):
    log = tmp_path / "locked.json"
    log.write_bytes(model_log[0].read_bytes())
    head, _ = read_log(log)
    with TuningLog(log, head):  # another tuner holds it
        second = subprocess.run(
            _tune_command(model, log, "--trials", "10", "--seed", "3"), capture_output=True, text=True, timeout=300
        )
    assert second.returncode == 2 and "being tuned by another process" in second.stderr
    assert log.read_bytes() == model_log[0].read_bytes()


def test_ctrl_c_stops_cleanly_and_keeps_every_record(model, tmp_path):
    log = tmp_path / "interrupted.json"
    returncode, err = _signal_after_records(_tune_command(model, log, "--trials", "60"), log, 5, signal.SIGINT)
    assert returncode == 130 and err.strip().splitlines()[-1] == "tvmc: interrupted"
    kept = _records(log)
    assert kept >= 5 and log.read_text().endswith("\n")
    result = tune(model, log, TARGET, trials=60, progress=False)  # resumes where it stopped
    assert sum(t.new_trials for t in result.tasks) == sum(t.trials for t in result.tasks) - kept


@pytest.mark.slow  # about a minute: every local candidate is built and timed
def test_local_runner_killed_mid_way_resumes_and_builds_exactly(model, untuned_outputs, tmp_path):
    """A SIGKILLed `tvmc tune --runner local` loses no finished record; rerunning the command
    finishes the rest without repeating a candidate, and the tuned build stays exact."""
    log = tmp_path / "local.json"
    _signal_after_records(_tune_command(model, log, "--runner", "local", "--trials", "6"), log, 2, signal.SIGKILL)
    survived = _records(log)
    assert 2 <= survived < 12
    before = log.read_text()
    result = tune(model, log, TARGET, trials=6, runner="local", progress=False)
    assert log.read_text().startswith(before[: before.rfind("\n") + 1])
    assert sum(t.new_trials for t in result.tasks) == 12 - survived
    for records in records_by_task(log).values():
        tiles = [json.dumps(r["tiles"], sort_keys=True) for r in records]
        assert len(tiles) == len(set(tiles)) == 6
        assert all(measured_or_rejected(r) for r in records), records
    assert_tuned_build_is_exact(model, log, untuned_outputs, tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_runner_through_a_tracker_and_server(model, untuned_outputs, tmp_path):
    tracker_port, server_port = _free_port(), _free_port()
    tracker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm.exec.rpc_tracker",
            "--host",
            "127.0.0.1",
            "--port",
            str(tracker_port),
            "--port-end",
            str(tracker_port + 1),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm.exec.rpc_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(server_port),
            "--port-end",
            str(server_port + 1),
            "--tracker",
            f"127.0.0.1:{tracker_port}",
            "--key",
            "tvm-npu-test",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        log = tmp_path / "rpc.json"
        result = tune(
            model,
            log,
            TARGET,
            trials=3,
            runner="rpc",
            rpc_tracker=f"127.0.0.1:{tracker_port}",
            rpc_key="tvm-npu-test",
            progress=False,
        )
        assert read_log(log)[0]["runner"] == "rpc"
        for records in records_by_task(log).values():
            assert len(records) == 3 and all(measured_or_rejected(r) for r in records), records
        assert all(t.new_trials == 3 for t in result.tasks)
        assert_tuned_build_is_exact(model, log, untuned_outputs, tmp_path)
    finally:
        for process in (server, tracker):  # the server forks a worker per session: end its whole group
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def test_tune_plot_and_cli_table(model, tmp_path, capsys):
    log, png = tmp_path / "cli.json", tmp_path / "curve.png"
    code = cli.main(
        ["tune", str(model), "-o", str(log), "--target", TARGET, "--trials", "5", "--plot", str(png), "--early-stopping", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "speedup" in out and png.read_bytes()[:4] == b"\x89PNG"
    for records in records_by_task(log).values():
        costs = [np.inf if r["cost"] is None else r["cost"] for r in records]
        best_at = int(np.argmin(costs))
        assert len(records) == 5 or len(records) - 1 - best_at == 2  # the goal, or two trials without progress


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--runner", "rpc"], "--runner rpc needs --rpc-tracker HOST:PORT and --rpc-key KEY"),
        (["--runner", "rpc", "--rpc-tracker", "localhost", "--rpc-key", "k"], "--rpc-tracker must be HOST:PORT"),
        (["--trials", "0"], "--trials must be at least 1"),
    ],
)
def test_tune_bad_flags_are_one_line_errors(model, tmp_path, capsys, args, fragment):
    code = cli.main(["tune", str(model), "-o", str(tmp_path / "log.json"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "log.json").exists()


def test_weightless_layers_are_tuning_tasks_too(tmp_path):
    """Pools and adds are SRAM-tiled like convs: their tilings are searched with the same features."""
    result = tune(default_model_path(), tmp_path / "default.json", "npu/mid", trials=2, seed=0, progress=False)
    kinds = {task.task.split()[0] for task in result.tasks}
    assert {"conv", "add", "max", "avg"} <= kinds, kinds
    assert all(task.best_cycles is not None for task in result.tasks)


# --- cascades: `tvmc tune --cascade` tunes each conv -> conv pair's band height; compile decides from the records


@pytest.fixture(scope="module")
def cascade_log(model, model_log, tmp_path_factory):
    """`model_log` resumed with --cascade: the layer tasks are done, only the cascade tasks are new."""
    log = tmp_path_factory.mktemp("tune") / "cascade.json"
    log.write_bytes(model_log[0].read_bytes())
    result = tune(model, log, TARGET, trials=10, runner="npu-model", seed=3, progress=False, cascade=True)
    return log, result


def pair_geometries(key: str) -> tuple[Geometry, Geometry]:
    producer, consumer = key.removeprefix("cascade ").split(" -> ")
    return tuple(geometry(json.loads(part.split(" ", 1)[1])) for part in (producer, consumer))


def assert_fuses_the_winning_pairs(extra: dict, log: Path) -> dict[int, int]:
    """The chain's consecutive NPU convs fuse exactly where the log's best cascade record costs less than the
    two layers' best records together, largest saving first, each layer in one cascade at most, with the
    recorded band height; {producer's position in the chain: rows} of the fused pairs."""
    best = best_records(read_log(log)[1])
    convs = [layer for layer in extra["layers"] if layer["tiles"] is not None]
    keys = [task_key(layer["kernel"], geometry(layer["geometry"])) for layer in convs]
    wins = []
    for i in range(len(convs) - 1):
        fused = best[f"cascade {keys[i]} -> {keys[i + 1]}"]
        saving = best[keys[i]]["cost"] + best[keys[i + 1]]["cost"] - fused["cost"]
        if saving > 0:
            wins.append((saving, i, fused["rows"]))
    expected, taken = {}, set()
    for _, i, rows in sorted(wins, reverse=True):
        if not {i, i + 1} & taken:
            expected[i] = rows
            taken |= {i, i + 1}
    fused = {
        i: layer["cascade"]["rows"]
        for i, layer in enumerate(convs)
        if layer["cascade"] is not None and layer["cascade"]["role"] == "producer"
    }
    assert fused == expected
    for layer in convs:
        if layer["cascade"] is not None:
            assert layer["cascade"]["tuned"] and layer["sram_proven"] == layer["sram_planned"]
        else:
            assert layer["tuned"]
    return fused


def test_cascade_tasks_search_the_band_heights_that_fit_costed_by_the_model(model, cascade_log):
    log, result = cascade_log
    config = resolve_target(TARGET)
    assert [t.new_trials for t in result.tasks if not t.cascade] == [0, 0]  # resumed from the layer tuning
    tasks = {key: records for key, records in records_by_task(log).items() if key.startswith("cascade ")}
    assert len(tasks) == 2 == sum(t.cascade for t in result.tasks)
    for key, records in tasks.items():
        g1, g2 = pair_geometries(key)
        space = band_heights(g1, g2, config)
        rows = [r["rows"] for r in records]
        assert len(rows) == len(set(rows)) == min(10, len(space))
        assert records[0].get("default") and rows[0] == default_band(g1, g2, config)
        for r in records:  # every band fits (an infeasible one is never sampled) and is costed by the model
            assert sum(cascade_footprint(g1, g2, r["rows"]).values()) <= config.sram_bytes
            assert r["cycles"] == sum(c.cycles for c in cascade_cost(g1, g2, r["rows"], config))
            assert r["cost"] == pytest.approx(r["cycles"] / (config.clock_mhz * 1e6))
    best = best_records(read_log(log)[1])
    expected = sorted(
        (best[key]["cost"], best[key.removeprefix("cascade ").split(" -> ")[0]]["cost"] + best[key.split(" -> ")[1]]["cost"])
        for key in tasks
    )
    assert sorted((t.best_cost, t.apart_cost) for t in result.tasks if t.cascade) == expected
    table = result.table()
    assert sum(line.startswith("cascade ") and line.endswith((": fuses", ": stays apart")) for line in table.splitlines()) == 2
    assert "beat their two layers apart" in table
    before = log.read_bytes()
    again = tune(model, log, TARGET, trials=10, runner="npu-model", seed=3, progress=False, cascade=True)
    assert log.read_bytes() == before and all(t.new_trials == 0 for t in again.tasks)


def test_compile_fuses_the_pairs_whose_cascade_records_win_exactly(model, cascade_log, untuned_outputs, tmp_path):
    log, _ = cascade_log
    result = tvm_npu.compile(model, tmp_path / "tuned.tar", TARGET, cascade=True, tuning_records=log)
    assert_fuses_the_winning_pairs(result.metadata.extra, log)  # the records decide (on this chain: apart)
    # Every cascade record made cheaper than its two layers apart: the records fuse a pair.
    head, *lines = log.read_text().splitlines()
    winning = tmp_path / "winning.json"
    edited = [json.loads(line) for line in lines]
    for record in edited:
        if "rows" in record and record["cost"] is not None:
            record["cost"] /= 1000
    winning.write_text("\n".join([head, *map(json.dumps, edited)]) + "\n")
    result = tvm_npu.compile(model, tmp_path / "fused.tar", TARGET, cascade=True, tuning_records=winning)
    assert assert_fuses_the_winning_pairs(result.metadata.extra, winning)
    rows = [line for line in report(result.metadata).splitlines() if " cascade 0 " in line]
    assert len(rows) == 2 and all(line.split(" rows")[1].startswith(" (tuned)") for line in rows)
    inputs, expected = untuned_outputs
    outputs = tvm_npu.load(result.package_path).run(inputs)
    for name, value in expected.items():
        np.testing.assert_array_equal(outputs[name], value)


def test_a_cascade_the_records_say_loses_stays_apart(model, model_log, cascade_log, tmp_path):
    # The layer records alone: no cascade records, so the DRAM heuristic decides, and fuses a pair.
    heuristic = tvm_npu.compile(model, tmp_path / "heuristic.tar", TARGET, cascade=True, tuning_records=model_log[0])
    fused = [layer["cascade"] for layer in heuristic.metadata.extra["layers"] if layer["cascade"] is not None]
    assert fused and not any(c["tuned"] for c in fused)
    # Every cascade record made dearer than its two layers apart: no pair fuses.
    head, *lines = cascade_log[0].read_text().splitlines()
    losing = tmp_path / "losing.json"
    edited = [json.loads(line) for line in lines]
    for record in edited:
        if "rows" in record and record["cost"] is not None:
            record["cost"] *= 1000
    losing.write_text("\n".join([head, *map(json.dumps, edited)]) + "\n")
    result = tvm_npu.compile(model, tmp_path / "apart.tar", TARGET, cascade=True, tuning_records=losing)
    assert assert_fuses_the_winning_pairs(result.metadata.extra, losing) == {}
    assert "Cascaded layers              0 in 0 cascades" in report(result.metadata)


@pytest.mark.parametrize(
    "fields, why",
    [
        ({"rows": 0}, "a cascade record needs rows"),
        ({"rows": "4"}, "a cascade record needs rows"),
        ({"rows": 4, "tiles": {"rows": 4, "channels": 8, "order": "weights"}}, "a cascade record needs rows"),
        ({"rows": 4, "task": "npu.conv2d {}"}, "a layer record needs tiles"),
        ({"rows": 4, "cost": "fast"}, "a record needs a task and a cost"),
    ],
)
def test_bad_cascade_records_are_corrupt(model_log, tmp_path, fields, why):
    head = model_log[0].read_text().splitlines()[0]
    bad = tmp_path / "bad.json"
    bad.write_text(f"{head}\n{json.dumps({'task': 'cascade a -> b', 'cost': 1e-5} | fields)}\n")
    with pytest.raises(tvm_npu.NpuError, match=f"corrupt \\(line 2: {why}"):
        read_log(bad)


def test_local_runner_measures_cascades_and_builds_exactly(model, untuned_outputs, tmp_path):
    log = tmp_path / "local_cascade.json"
    result = tune(model, log, TARGET, trials=2, runner="local", progress=False, cascade=True)
    config = resolve_target(TARGET)
    cascades = [t for t in result.tasks if t.cascade]
    assert len(cascades) == 2 and all(t.trials == 2 and t.apart_cost is not None for t in cascades)
    for key, records in records_by_task(log).items():
        assert all(measured_or_rejected(r) for r in records), records
        if key.startswith("cascade "):  # measured on the host, not the model's figure
            assert all(r["cost"] != pytest.approx(r["cycles"] / (config.clock_mhz * 1e6)) for r in records)
    compiled = tvm_npu.compile(model, tmp_path / "local.tar", TARGET, cascade=True, tuning_records=log)
    assert_fuses_the_winning_pairs(compiled.metadata.extra, log)
    inputs, expected = untuned_outputs
    outputs = tvm_npu.load(compiled.package_path).run(inputs)
    for name, value in expected.items():
        np.testing.assert_array_equal(outputs[name], value)
