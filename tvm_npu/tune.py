"""Autotuning: meta_schedule's evolutionary search and XGBoost cost model over each NPU layer's tiling.

Entry point: `tune(model, output, target, trials, runner, ...) -> TuneResult` (`tvmc tune`).

Tasks are the distinct tiled NPU layers (`plan.task_key`: kernel + geometry); layers that
share one are tuned once. A task's knobs are its kernel's tiling (`tiling.Tiles`: output rows,
output channels, loop order, double buffering on/off; and, measured on the host only, the
host's parallel outer loop and SIMD lanes on/off), and its search space is `plan.feasible`:
only tilings whose footprint fits the SRAM, so an infeasible candidate is never sampled, built
or measured. The builder lowers each candidate as `lower` does (`lower.lower_layer`, `lower_cascade`):
one whose lowered TIR does not allocate exactly the planned footprint is recorded as failed, never
scored or measured.
In the meta_schedule trace the knob is one `sample_categorical` decision (an
index into that list) bound to a block annotation, which trace replay and mutation
reproduce; the builder applies the kernel's own `schedule(primfunc, tiles)` for that index.
`_Mutator` moves one knob at a time; XGBoost learns on tile features
(`Task.features`: sizes, tile counts, footprints, MAC-array fill, the on/off knobs), since the unscheduled
TIR the trace annotates looks the same for every candidate.

With `cascade`, each distinct conv -> conv pair `tvm_npu.cascade` could fuse (both layers tuned
above) is a task too (`CascadeTask`, `cascade.task_key`): its knob is the band height, its space
`cascade.band_heights` (heights whose cascade footprint fits the SRAM), its default the height the DRAM
heuristic picks. Its candidates are the cascade PrimFunc in bands, costed with `perf.cascade_cost`
or measured on the host; `tvmc compile --cascade --tuning-records` fuses a pair whose best cascade
record beats its two layers' best records together. Both kinds of task share the machinery below:
a task schedules, costs, records, describes and featurizes its candidate i.

Runners: "npu-model" scores a candidate with `perf.layer_cost` (or `cascade_cost`) without building or running it
(cost = cycles / clock: deterministic for a seed); "local" builds it for the host and measures
it with meta_schedule's LocalRunner; "rpc" measures it on the machines registered with a TVM
RPC tracker (RPCRunner). Each task first measures the planner's default tiling, then searches.
Every measured candidate is appended to the log at once (`tvm_npu.records`); rerunning the
same command resumes: measured candidates are neither measured nor counted again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.logging import get_logging_func

from .atomic import atomic_output, check_output_path
from .build import pass_context
from .lower import lower_cascade, lower_layer
from .errors import NpuError, first_line
from . import cascade
from .perf import cascade_cost, layer_cost
from .plan import LayerPlan, feasible, task_key
from .records import TuningLog, best_records, file_sha256, header
from .registry import kernel
from .target import NpuConfig, resolve_target
from .tiling import Geometry, Tiles, cascade_footprint, cascade_rolls, footprint

RUNNERS = ("npu-model", "local", "rpc")
TILING = "npu_tiling"  # the block annotation that carries the sampled index into a task's space
TRIALS_PER_ITER = 16
_EVALUATOR = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False)


@dataclass
class Task:
    """A layer's tiling. What the tuner asks of a task (this and `CascadeTask`): its candidates `space`
    (the default among them), and per candidate i its schedule, planned SRAM footprint, NPU-model cycles,
    record fields, neighbours for the mutator and features for XGBoost."""

    key: str
    layer: LayerPlan  # the first layer of the task (the others differ in constants only)
    layers: list[str]
    func: tirx.PrimFunc  # the first layer's unscheduled kernel: what the trace annotates
    default: Tiles  # the planner's choice
    space: list[Tiles]  # every tiling that fits the SRAM (with the host's knobs when measured on the host)

    @property
    def geometry(self) -> Geometry:
        return self.layer.geometry

    @property
    def name(self) -> str:
        return self.geometry.describe()

    def lower(self, index: int) -> tirx.PrimFunc:
        """Candidate `index` scheduled, its footprint proven against the plan (`lower.lower_layer`)."""
        layer = self.layer
        return lower_layer(kernel(layer.kernel), layer.params, layer.inputs, self.space[index], self.planned(index))[0]

    def planned(self, index: int) -> int:
        return sum(footprint(self.geometry, self.space[index]).values())

    def cycles(self, index: int, config: NpuConfig) -> float:
        return layer_cost(self.geometry, self.space[index], config).cycles

    def fields(self, index: int) -> dict:
        return {"tiles": dataclasses.asdict(self.space[index])}

    @staticmethod
    def candidate(record: dict) -> Tiles:
        return Tiles(**record["tiles"])

    def describe(self, record: dict) -> str:
        return self.candidate(record).describe()

    def neighbours(self, index: int) -> list[int]:
        """The tilings one knob (rows, channels, loop order, or one on/off knob) away."""
        current = dataclasses.astuple(self.space[index])
        return [i for i, t in enumerate(self.space) if sum(a != b for a, b in zip(dataclasses.astuple(t), current)) == 1]

    def features(self, config: NpuConfig) -> np.ndarray:
        """Per tiling: tile sizes, tile counts, SRAM footprint and how well a tile fills the MAC array."""
        g = self.geometry
        rows = []
        for t in self.space:
            size = footprint(g, t)
            pixels = t.rows * g.out_w
            rows.append(
                [
                    math.log2(t.rows),
                    math.log2(t.channels),
                    float(t.order == "weights"),
                    float(t.double_buffer),
                    float(t.parallel),
                    float(t.vectorize),
                    math.log2(-(-g.out_h // t.rows)),
                    math.log2(-(-g.out_channels // t.channels)),
                    *(math.log2(1 + size.get(k, 0)) for k in ("input", "weights", "acc", "output")),  # weightless: none
                    math.log2(1 + sum(size.values())),
                    _fill(pixels, config.mac_rows),
                    _fill(t.channels, config.mac_cols),
                ]
            )
        return np.array(rows, np.float32)


def _fill(used: int, lanes: int) -> float:
    """How full the MAC array's `lanes` (rows or columns) are over the passes `used` of them take."""
    return used / (-(-used // lanes) * lanes)


@dataclass
class CascadeTask:
    """A conv -> conv pair's cascade (`tvm_npu.cascade`): its candidates are the band heights that fit."""

    key: str
    producer: LayerPlan  # of the first pair (the others have the same geometries)
    consumer: LayerPlan
    layers: list[str]  # the pairs, "producer+consumer"
    func: tirx.PrimFunc  # the pair's unscheduled cascade PrimFunc (`cascade.compute`)
    default: int  # the DRAM heuristic's band height
    space: list[int]  # `cascade.band_heights`, ascending

    @property
    def name(self) -> str:
        return f"cascade {self.producer.geometry.describe()} => {self.consumer.geometry.describe()}"

    def lower(self, index: int) -> tirx.PrimFunc:
        """Candidate `index` in bands, its footprint proven against the plan (`lower.lower_cascade`)."""
        return lower_cascade(self.producer, self.consumer, self.space[index], self.planned(index))[0]

    def planned(self, index: int) -> int:
        return sum(cascade_footprint(self.producer.geometry, self.consumer.geometry, self.space[index]).values())

    def cycles(self, index: int, config: NpuConfig) -> float:
        costs = cascade_cost(self.producer.geometry, self.consumer.geometry, self.space[index], config)
        return sum(c.cycles for c in costs)

    def fields(self, index: int) -> dict:
        return {"rows": self.space[index]}

    @staticmethod
    def candidate(record: dict) -> int:
        return record["rows"]

    def describe(self, record: dict) -> str:
        return f"{record['rows']} rows per band"

    def neighbours(self, index: int) -> list[int]:
        return [i for i in (index - 1, index + 1) if 0 <= i < len(self.space)]

    def features(self, config: NpuConfig) -> np.ndarray:
        """Per band height: the band and band counts, the footprint's parts, what rolls, MAC-array row fill."""
        g1, g2 = self.producer.geometry, self.consumer.geometry
        rows = []
        for r in self.space:
            size = cascade_footprint(g1, g2, r)
            pixels = r * g2.out_w
            rows.append(
                [
                    math.log2(r),
                    math.log2(-(-g2.out_h // r)),
                    *map(float, cascade_rolls(g1, g2, r)),
                    *(math.log2(1 + size[k]) for k in ("input", "acc", "intermediate", "output")),
                    math.log2(1 + sum(size.values())),
                    _fill(pixels, config.mac_rows),
                ]
            )
        return np.array(rows, np.float32)


@dataclass
class TaskResult:
    task: str  # geometry, readable
    layers: int  # layers sharing the task (a cascade task: layer pairs)
    trials: int
    default_cost: float | None  # seconds (NPU-model cycles / clock, or measured)
    best_cost: float | None
    default_cycles: float
    best_cycles: float | None  # NPU-model cycles of the best candidate
    best: str | None  # the best candidate, readable
    new_trials: int  # measured by this run (the rest were resumed from the log)
    seconds: float  # wall time of this run's trials
    history: list[float] = field(default_factory=list)  # best cost so far, per trial
    cascade: bool = False  # a cascade task
    apart_cost: float | None = None  # cascade: its two layers' best costs together (None: one was never measured)

    @property
    def speedup(self) -> float | None:
        return self.default_cost / self.best_cost if self.default_cost and self.best_cost else None

    @property
    def fuses(self) -> bool:
        """A cascade task whose best band beats its layers apart (`tvmc compile --cascade` fuses its pairs)."""
        return None not in (self.apart_cost, self.best_cost) and self.best_cost < self.apart_cost


@dataclass
class TuneResult:
    log: Path
    runner: str
    config: NpuConfig
    tasks: list[TaskResult]

    def table(self) -> str:
        model = self.runner == "npu-model"
        unit = "cycles" if model else "ms"
        scale = self.config.clock_mhz * 1e6 if model else 1e3

        def cost(value):
            return "failed" if value is None else f"{value * scale:.0f}" if model else f"{value * scale:.3f}"

        width = max([48] + [len(t.task) + 1 for t in self.tasks])
        lines = [
            f"{'task':<{width}}{'layers':>7}{'trials':>7}{'default ' + unit:>16}{'best ' + unit:>14}{'speedup':>9}"
            f"{'s/trial':>9}  best"
        ]
        for t in self.tasks:
            best = t.best or "-"
            if t.cascade:
                best += (
                    f"; apart {cost(t.apart_cost)}: {'fuses' if t.fuses else 'stays apart'}"
                    if t.apart_cost is not None
                    else "; a layer unmeasured: the DRAM heuristic decides"
                )
            per_trial = f"{t.seconds / t.new_trials:.2f}" if t.new_trials else "-"
            speedup = "-" if t.speedup is None else f"{t.speedup:.2f}x"
            lines.append(
                f"{t.task:<{width}}{t.layers:>7}{t.trials:>7}{cost(t.default_cost):>16}{cost(t.best_cost):>14}"
                f"{speedup:>9}{per_trial:>9}  {best}"
            )
        layers = [t for t in self.tasks if not t.cascade]
        default = sum(t.default_cycles * t.layers for t in layers)
        best = sum((t.best_cycles or t.default_cycles) * t.layers for t in layers)
        if best:
            lines.append(
                f"tiled NPU layers, NPU-model cycles: default {default:.0f}, tuned {best:.0f} ({default / best:.2f}x fewer)"
            )
        cascades = [t for t in self.tasks if t.cascade]
        if cascades:
            lines.append(
                f"cascade tasks: {sum(t.fuses for t in cascades)} of {len(cascades)} beat their two layers "
                "apart; `tvmc compile --cascade --tuning-records` fuses their pairs (a layer in one at most)"
            )
        return "\n".join(lines)


def tune(
    model: str | Path,
    output: str | Path,
    target: str | NpuConfig = "npu",
    trials: int = 64,
    runner: str = "npu-model",
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    seed: int = 0,
    early_stopping: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    plot: str | Path | None = None,
    progress: bool = True,
    cascade: bool = False,
) -> TuneResult:
    """Tunes every tiled NPU layer of `model` for up to `trials` candidates each, appending the
    measurements to the log `output` (resumed if it exists). `runner` is one of RUNNERS; "rpc"
    needs `rpc_tracker` ("host:port") and `rpc_key`. `early_stopping` ends a task after that many
    trials without a better candidate. `plot` draws best cost against trials per task (PNG).
    `cascade` then tunes the band height of every conv -> conv pair `tvm_npu.cascade` could fuse."""
    config = resolve_target(target)
    output = check_output_path(output)
    if plot is not None:
        plot = check_output_path(plot)
    if runner not in RUNNERS:
        raise NpuError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    if trials < 1:
        raise NpuError(f"--trials must be at least 1, got {trials}")
    if early_stopping is not None and early_stopping < 1:
        raise NpuError(f"--early-stopping must be at least 1, got {early_stopping}")
    tracker = _tracker(rpc_tracker, rpc_key) if runner == "rpc" else None
    if not Path(model).is_file():
        raise NpuError(f"model file {model} does not exist")
    from .pipeline import planned  # the pipeline imports records, not tune: no cycle

    # The log is locked (and checked against this run) before the long work starts.
    with TuningLog(output, header(file_sha256(model), Path(model).stem, config, runner, seed)) as log:
        front, layers = planned(model, config, input_shapes, allow_cpu_fallback=True)
        tasks = _tasks(front.mod, layers, config, host=runner != "npu-model", cascades=cascade)
        measure = _measuring_runner(runner, tracker)
        try:
            results = _tune_all(tasks, log, config, runner, measure, trials, seed, early_stopping, progress)
        finally:
            if measure is not None:
                measure.pool.shutdown()
    result = TuneResult(output, runner, config, results)
    if plot is not None:
        _plot(result, plot)
    return result


def _tracker(address: str | None, key: str | None) -> tuple[str, int, str]:
    if not address or not key:
        raise NpuError("--runner rpc needs --rpc-tracker HOST:PORT and --rpc-key KEY")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise NpuError(f"--rpc-tracker must be HOST:PORT, got {address!r}")
    return host, int(port), key


def _measuring_runner(runner: str, tracker) -> ms.runner.Runner | None:
    if runner == "local":
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=_EVALUATOR)
    if runner == "rpc":
        host, port, key = tracker
        rpc = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key, session_timeout_sec=120)
        return ms.runner.RPCRunner(rpc_config=rpc, evaluator_config=_EVALUATOR, max_workers=1)
    return None


def _tasks(mod: tvm.IRModule, layers: list[LayerPlan], config: NpuConfig, host: bool, cascades: bool) -> list[Task | CascadeTask]:
    """One task per distinct (kernel, geometry) among the layers the planner tiles on the NPU; `host`:
    the runner measures on the host, so the host's loop knobs are searched too. With `cascades`, then one
    per distinct pair of those layers `tvm_npu.cascade` could fuse with a band height that fits."""
    tasks: dict[str, Task | CascadeTask] = {}
    for layer in layers:
        if layer.tiles is None or layer.placement != "npu":
            continue
        key = task_key(layer.kernel, layer.geometry)
        if key in tasks:
            tasks[key].layers.append(layer.name)
            continue
        prim, _ = lower_layer(kernel(layer.kernel), layer.params, layer.inputs, None)
        tasks[key] = Task(key, layer, [layer.name], prim, layer.tiles, feasible(layer.geometry, config, host))
    for producer, consumer in cascade.pairs(mod, {layer.function: layer for layer in layers}) if cascades else ():
        key = cascade.task_key(producer, consumer)
        if key in tasks:
            tasks[key].layers.append(f"{producer.name}+{consumer.name}")
            continue
        space = cascade.band_heights(producer.geometry, consumer.geometry, config)
        if not space:
            continue
        tasks[key] = CascadeTask(
            key,
            producer,
            consumer,
            [f"{producer.name}+{consumer.name}"],
            cascade.compute(producer, consumer),
            cascade.default_band(producer.geometry, consumer.geometry, config),
            space,
        )
    return list(tasks.values())


def _tune_all(tasks, log, config, runner, measure, trials, seed, early_stopping, progress) -> list[TaskResult]:
    from tqdm import tqdm

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    goals = [min(trials, len(t.space)) for t in tasks]
    done = [sum(r["task"] == t.key for r in log.records) for t in tasks]
    results = []
    with (
        tqdm(
            total=sum(goals), initial=min(sum(done), sum(goals)), desc="all tasks", unit="trial", disable=not progress, position=0
        ) as overall,
        _deferred_interrupt() as interrupted,
    ):
        for number, (task, goal) in enumerate(zip(tasks, goals), 1):
            with tqdm(
                total=goal,
                desc=f"task {number}/{len(tasks)} {task.name}",
                unit="trial",
                disable=not progress,
                position=1,
                leave=False,
            ) as bar:
                session = _Session(task, log, config, runner, measure, goal, early_stopping, [bar, overall], interrupted)
                session.run(seed)
            if interrupted.is_set():
                break
            results.append(session.result())
    return results


@contextlib.contextmanager
def _deferred_interrupt():
    """Ctrl-C while meta_schedule's C++ loop runs would end in std::terminate; instead it sets this
    event, the tuner's own callbacks stop the search at the next candidate, and the interrupt is raised
    from Python (every finished record is already in the log)."""
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt


class _Session:
    """Tuning one task: its log records, the trial budget, and the progress bars to advance."""

    def __init__(
        self,
        task: Task | CascadeTask,
        log: TuningLog,
        config: NpuConfig,
        runner: str,
        measure,
        goal: int,
        early_stopping: int | None,
        bars,
        interrupted: threading.Event,
    ):
        self.task, self.log, self.config, self.runner, self.measure = task, log, config, runner, measure
        self.goal, self.early_stopping, self.bars, self.interrupted = goal, early_stopping, bars, interrupted
        self.index = {candidate: i for i, candidate in enumerate(task.space)}
        self.records = [r for r in log.records if r["task"] == task.key]
        self.measured = {self.index[task.candidate(r)]: r["cost"] for r in self.records if task.candidate(r) in self.index}
        self.new_trials, self.seconds = 0, 0.0
        self.target = config.tvm_target()

    def finished(self) -> bool:
        if len(self.records) >= self.goal or self.interrupted.is_set():
            return True
        if self.early_stopping is None:
            return False
        costs = [math.inf if r["cost"] is None else r["cost"] for r in self.records]
        return bool(costs) and len(costs) - 1 - int(np.argmin(costs)) >= self.early_stopping

    def run(self, seed: int) -> None:
        start = time.perf_counter()
        if not any(r.get("default") for r in self.records) and not self.interrupted.is_set():
            self._measure_default()
        if not self.finished():
            self._search(seed)
        self.seconds = time.perf_counter() - start

    def _measure_default(self) -> None:
        index = self.index[self.task.default]
        mod = _annotated(self.task.func, index)
        builder, runner = _Builder(self), _Runner(self)
        (built,) = builder.build([ms.builder.BuilderInput(mod, self.target)])
        try:
            if built.error_msg:
                self.record(index, None, built.error_msg, default=True)
                return
            args = ms.arg_info.ArgInfo.from_prim_func(self.task.func)
            (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])
            ran = future.result()
            self.record(index, _seconds(ran.run_secs), ran.error_msg, default=True)
        finally:
            shutil.rmtree(Path(built.artifact_path).parent, ignore_errors=True)

    def _search(self, seed: int) -> None:
        size = len(self.task.space)
        space = ms.space_generator.ScheduleFn(
            _design_space(size), sch_rules=[], postprocs=[], mutator_probs={_Mutator(self.task): 1.0}
        )
        strategy = ms.search_strategy.EvolutionarySearch(
            population_size=min(256, 4 * size), init_min_unmeasured=min(16, size), genetic_num_iters=3
        )
        context = _tune_context(tvm.IRModule({"main": self.task.func}), self.target, space, strategy, self.task.name, seed)
        database = ms.database.MemoryDatabase()
        workload = database.commit_workload(tvm.IRModule({"main": self.task.func}))
        args = ms.arg_info.ArgInfo.from_prim_func(self.task.func)
        for index, cost in self.measured.items():  # resumed: the search starts from what the log knows
            if cost is not None:
                database.commit_tuning_record(
                    ms.database.TuningRecord(_trace(self.task.func, size, index), workload, [cost], self.target, args)
                )
        np.random.seed(seed)  # the xgb model's warm-up predictions are numpy-random
        cost_model = ms.cost_model.XGBModel(
            extractor=_Features(self.task.features(self.config)), num_warmup_samples=TRIALS_PER_ITER, num_tuning_cores=1
        )
        self.recorder = _Recorder(self)
        # The budget leaves room for candidates the log already holds: they cost nothing and do not
        # count; the recorder ends the task when `goal` records exist.
        budget = self.goal - len(self.records) + len(self.measured)
        with tempfile.TemporaryDirectory(prefix="tvm_npu_tune_") as work_dir, self._until_finished():
            ms.tune.tune_tasks(
                tasks=[context],
                task_weights=[1.0],
                work_dir=work_dir,
                max_trials_global=budget,
                max_trials_per_task=budget,
                num_trials_per_iter=min(TRIALS_PER_ITER, budget),
                builder=_Builder(self),
                runner=_Runner(self),
                database=database,
                cost_model=cost_model,
                measure_callbacks=[
                    ms.measure_callback.AddToDatabase(),
                    ms.measure_callback.RemoveBuildArtifact(),
                    ms.measure_callback.UpdateCostModel(),
                    self.recorder,
                ],
                task_scheduler="round-robin",
            )

    @contextlib.contextmanager
    def _until_finished(self):
        """The recorder leaves the search by raising once the task is finished; TVM's FFI hands that
        exception back as a RuntimeError, so whether it was ours is read from the session."""
        try:
            yield
        except Exception:
            if not self.finished():
                raise

    def model_seconds(self, index: int) -> float:
        return self.task.cycles(index, self.config) / (self.config.clock_mhz * 1e6)

    def record(self, index: int, cost: float | None, error: str | None, default: bool = False) -> None:
        entry = {"task": self.task.key, **self.task.fields(index), "cost": cost, "cycles": self.task.cycles(index, self.config)}
        if default:
            entry["default"] = True
        if error:  # meta_schedule's messages start with who failed and end with why
            lines = error.strip().splitlines()
            entry["error"] = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
        self.log.append(entry)
        self.records.append(entry)
        self.measured[index] = cost
        self.new_trials += 1
        for bar in self.bars:
            bar.update(1)

    def result(self) -> TaskResult:
        default = next(r for r in self.records if r.get("default"))
        ok = [r for r in self.records if r["cost"] is not None]
        best = min(ok, key=lambda r: r["cost"]) if ok else None
        history, low = [], math.inf
        for r in self.records:
            low = min(low, math.inf if r["cost"] is None else r["cost"])
            history.append(low)
        result = TaskResult(
            self.task.name,
            len(self.task.layers),
            len(self.records),
            default["cost"],
            None if best is None else best["cost"],
            default["cycles"],
            None if best is None else best["cycles"],
            None if best is None else self.task.describe(best),
            self.new_trials,
            self.seconds,
            history,
        )
        if isinstance(self.task, CascadeTask):
            found = cascade.recorded(best_records(self.log.records), self.task.producer, self.task.consumer)
            result.cascade, result.apart_cost = True, None if found is None else found[2]
        return result


def _seconds(run_secs) -> float | None:
    """The median of the repeats: robust to other jobs sharing the host's cores."""
    return None if not run_secs else float(np.median([float(s) for s in run_secs]))


def _design_space(size: int):
    """The trace: one categorical decision over the feasible tilings, bound to an annotation so replay keeps it."""

    def sample(sch: s_tir.Schedule) -> None:
        index = sch.sample_categorical(candidates=list(range(size)), probs=[1.0 / size] * size)
        sch.annotate(sch.get_sblock("root"), TILING, index)

    return sample


def _annotated(func: tirx.PrimFunc, index: int) -> tvm.IRModule:
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    sch.annotate(sch.get_sblock("root"), TILING, index)
    return sch.mod


def _trace(func: tirx.PrimFunc, size: int, index: int) -> s_tir.Trace:
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    _design_space(size)(sch)
    (inst,) = [i for i in sch.trace.insts if i.kind.name == "SampleCategorical"]
    return sch.trace.with_decision(inst, index, remove_postproc=True)


def _tiling_index(mod: tvm.IRModule) -> int:
    return int(mod["main"].body.block.annotations[TILING])


@derived_object
class _Mutator(ms.mutator.PyMutator):
    """Moves the decision to one of the task's neighbours of the current candidate (`Task.neighbours`)."""

    def __init__(self, task: Task | CascadeTask):
        super().__init__()
        self.task = task

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, trace: s_tir.Trace, rand_state) -> s_tir.Trace | None:
        (inst,) = [i for i in trace.insts if i.kind.name == "SampleCategorical"]
        neighbours = self.task.neighbours(int(trace.decisions[inst]))
        if not neighbours:
            return None
        return trace.with_decision(inst, random.Random(int(rand_state)).choice(neighbours), remove_postproc=True)

    def clone(self) -> _Mutator:
        return _Mutator(self.task)


@derived_object
class _Features(ms.feature_extractor.PyFeatureExtractor):
    """What XGBoost learns from: the task's features of each candidate (`Task.features`; not the
    performance model's cycles), since the unscheduled TIR the trace annotates is the same for all."""

    def __init__(self, features: np.ndarray):
        super().__init__()
        self.features = features

    def extract_from(self, context, candidates):
        return [tvm.runtime.tensor(self.features[_tiling_index(c.sch.mod)][None]) for c in candidates]


@derived_object
class _Builder(ms.builder.PyBuilder):
    """Schedules the candidate's tiling with its kernel and proves the footprint (a tiling whose lowered
    TIR needs more SRAM than planned fails here, before it is scored or measured); npu-model: no build
    (the artifact names the tiling); local/rpc: built for the host. Logged candidates are not redone."""

    def __init__(self, session: _Session):
        super().__init__()
        self.session = session

    def build(self, build_inputs):
        if self.session.interrupted.is_set():
            raise RuntimeError("interrupted")  # ends the search (see _deferred_interrupt)
        results = []
        for build_input in build_inputs:
            index = _tiling_index(build_input.mod)
            folder = Path(tempfile.mkdtemp(prefix="tvm_npu_candidate_"))
            try:
                results.append(ms.builder.BuilderResult(str(self._artifact(index, folder)), None))
            except Exception as err:  # noqa: BLE001 - a failed candidate is a result, recorded with its error
                shutil.rmtree(folder, ignore_errors=True)
                results.append(ms.builder.BuilderResult(None, f"{type(err).__name__}: {first_line(err)}"))
        return results

    def _artifact(self, index: int, folder: Path) -> Path:
        s = self.session
        if index in s.measured:
            return _candidate_file(folder, index, cached=True, cost=s.measured[index])
        # The planned footprint admitted the candidate; the lowered TIR has the last word (as in `lower`).
        func = s.task.lower(index)
        if s.runner == "npu-model":
            return _candidate_file(folder, index, cached=False)
        with pass_context():
            library = tvm.compile(tvm.IRModule({"main": func}), target=s.target)
        path = folder / "kernel.tar"
        library.export_library(str(path))
        return path


def _candidate_file(folder: Path, index: int, cached: bool, cost: float | None = None) -> Path:
    """The artifact of a candidate that is not built: the model scores it, or the log already holds its cost."""
    path = folder / "candidate.json"
    path.write_text(json.dumps({"index": index, "cached": cached, "cost": cost}))
    return path


@derived_object
class _Done(ms.runner.PyRunnerFuture):
    def __init__(self, result: ms.runner.RunnerResult):
        super().__init__()
        self.value = result

    def done(self) -> bool:
        return True

    def result(self) -> ms.runner.RunnerResult:
        return self.value


@derived_object
class _Runner(ms.runner.PyRunner):
    """Scores npu-model candidates (and repeats of logged ones) at once; hands built kernels to
    the measuring runner (LocalRunner or RPCRunner)."""

    def __init__(self, session: _Session):
        super().__init__()
        self.session = session

    def run(self, runner_inputs):
        futures, built = [None] * len(runner_inputs), []
        for i, runner_input in enumerate(runner_inputs):
            if runner_input.artifact_path.endswith(".json"):
                candidate = json.loads(Path(runner_input.artifact_path).read_text())
                cost = candidate["cost"] if candidate["cached"] else self.session.model_seconds(candidate["index"])
                result = ms.runner.RunnerResult(None, "failed before") if cost is None else ms.runner.RunnerResult([cost], None)
                futures[i] = _Done(result)
            else:
                built.append(i)
        if built:
            for i, future in zip(built, self.session.measure.run([runner_inputs[i] for i in built])):
                futures[i] = future
        return futures


@derived_object
class _Recorder(ms.measure_callback.PyMeasureCallback):
    """Appends each newly measured candidate to the log; ends the task at its goal or early stop."""

    def __init__(self, session: _Session):
        super().__init__()
        self.session = session

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        s = self.session
        for candidate, built, ran in zip(measure_candidates, builder_results, runner_results):
            index = _tiling_index(candidate.sch.mod)
            if index in s.measured or s.finished():
                continue
            error = built.error_msg or ran.error_msg
            s.record(index, None if error else _seconds(ran.run_secs), error)
        if s.finished():
            # TaskScheduler.terminate_task here trips the scheduler's own termination check once its
            # budget runs out too; leaving the loop by an exception ends the task cleanly.
            raise RuntimeError("task finished")


def _tune_context(mod, target, space, strategy, name: str, seed: int) -> ms.TuneContext:
    """ms.TuneContext without its constructor's `import tvm.s_tir.tensor_intrin`: that parses every
    tensor intrinsic of every GPU/CPU backend (30-78 s measured here, per process), and a tiling space
    uses none. The public constructor does nothing else: it calls these same two FFI functions."""
    context = ms.TuneContext.__new__(ms.TuneContext)
    context.__init_handle_by_constructor__(
        ms._ffi_api.TuneContext,
        mod,
        target,
        space,
        strategy,
        name,
        1,
        seed,  # noqa: SLF001
        get_logging_func(logging.getLogger("tvm.s_tir.meta_schedule")),
    )
    ms._ffi_api.TuneContextInitialize(context)  # noqa: SLF001
    return context


def _plot(result: TuneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = result.runner == "npu-model"
    scale = result.config.clock_mhz * 1e6 if model else 1e3
    fig, ax = plt.subplots(figsize=(8, 5))
    for t in result.tasks:
        if t.history and math.isfinite(t.history[-1]):
            ax.plot(range(1, len(t.history) + 1), [c * scale for c in t.history], label=f"{t.task} (x{t.layers})")
    ax.set_xlabel("trials")
    ax.set_ylabel("best NPU-model cycles" if model else "best measured ms")
    ax.set_yscale("log")
    ax.set_title(f"tuning on npu/{result.config.name}, runner {result.runner}")
    if len(result.tasks) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_output(path) as stream:
        fig.savefig(stream, format="png", dpi=120)
    plt.close(fig)
