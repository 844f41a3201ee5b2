"""Tuning records: the one file `tvmc tune` appends to and `tvmc compile --tuning-records` reads.

A log is JSON lines. Line 1 is a header naming what the records are valid for (tvm_npu
version, the model file's SHA-256, the NPU config, runner and seed); every other line is one
measured candidate of one task: a layer's (`tvm_npu.plan.task_key`) with its tiles (`tiling.Tiles`' knobs),
or a conv -> conv pair's cascade (`tvm_npu.cascade.task_key`, "cascade <producer task> -> <consumer
task>") with its band height in rows; its cost in seconds (NPU-model cycles / clock, or measured host
seconds) and its NPU-model cycles.

Records are appended one line per write, flushed and fsync'ed, so a killed tuner loses no
finished record; a line cut short by the kill (no trailing newline) is dropped on resume.
A tuner holds an exclusive `flock` on the log for its whole run, so a second tuner on the
same log stops with an error instead of interleaving writes.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path

from .errors import NpuError
from .tiling import Tiles
from .target import NpuConfig
from .version import __version__

FORMAT = "tvm_npu-tuning-log/1"
KNOBS = {f.name for f in dataclasses.fields(Tiles)}
REQUIRED_KNOBS = {"rows", "channels", "order"}  # the on/off knobs default to on (logs written before they existed)
CASCADE_TASK = "cascade "  # how a cascade task's key starts: its records carry band rows instead of tiles


def header(model_sha256: str, model_name: str, config: NpuConfig, runner: str, seed: int) -> dict:
    return {
        "format": FORMAT,
        "tvm_npu": __version__,
        "model": model_name,
        "model_sha256": model_sha256,
        "target": f"npu/{config.name}",
        "npu_config": config.to_dict(),
        "runner": runner,
        "seed": seed,
    }


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_log(path: str | Path) -> tuple[dict, list[dict]]:
    """(header, records) of a complete log; a corrupt one raises NpuError naming the line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise NpuError(f"cannot read tuning records {path}: {err.strerror}") from err
    return _parse(path, _text(path, data))[:2]


def _text(path: Path, data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise _corrupt(path, data[: err.start].count(b"\n") + 1, "not UTF-8 text") from None


def _parse(path: Path, text: str) -> tuple[dict, list[dict], int]:
    """(header, records, length of the complete lines): a last line without its newline was cut by a kill."""
    complete = text[: text.rfind("\n") + 1]
    lines = complete.splitlines()
    if not lines:
        raise _corrupt(path, 1, "no header")
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise _corrupt(path, number, f"not JSON: {err.msg}") from err
        if not isinstance(parsed[-1], dict):
            raise _corrupt(path, number, "not a JSON object")
    head, records = parsed[0], parsed[1:]
    if head.get("format") != FORMAT:
        raise _corrupt(path, 1, f"not a {FORMAT} header")
    for number, record in enumerate(records, 2):
        cost = record.get("cost", "missing")
        if not (isinstance(record.get("task"), str) and (cost is None or type(cost) in (int, float))):
            raise _corrupt(path, number, "a record needs a task and a cost (seconds, or null when it failed)")
        if record["task"].startswith(CASCADE_TASK):
            rows = record.get("rows")
            if not (type(rows) is int and rows >= 1 and "tiles" not in record):
                raise _corrupt(path, number, "a cascade record needs rows (its band height, a positive integer), no tiles")
        elif not (isinstance(record.get("tiles"), dict) and REQUIRED_KNOBS <= record["tiles"].keys() <= KNOBS):
            raise _corrupt(
                path, number, f"a layer record needs tiles with rows, channels and order, taking only {', '.join(sorted(KNOBS))}"
            )
    return head, records, len(complete.encode())


def _corrupt(path: Path, line: int, why: str) -> NpuError:
    return NpuError(f"tuning records {path} are corrupt (line {line}: {why}); rerun tvmc tune to write a new file")


class TuningLog:
    """An open log being tuned into: locked, resumed, appended to durably."""

    def __init__(self, path: str | Path, head: dict):
        self.path = Path(path)
        self.file = open(self.path, "a+b")  # noqa: SIM115 - held open (and locked) until close()
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise NpuError(f"{self.path} is being tuned by another process; wait for it or pass another -o") from None
        self.file.seek(0)
        try:
            text = _text(self.path, self.file.read())
            if not text.strip():
                self.file.truncate(0)
                self._write(head)
                self.records: list[dict] = []
                return
            found, self.records, length = _parse(self.path, text)
        except NpuError:
            self.close()
            raise
        self.file.truncate(length)  # a record cut short by a kill
        mismatched = [k for k in ("model_sha256", "npu_config", "runner", "seed") if found.get(k) != head.get(k)]
        if mismatched:
            self.close()
            raise NpuError(
                f"{self.path} holds records of another tuning run (different {', '.join(mismatched)}); pass another -o"
            )

    def append(self, record: dict) -> None:
        self._write(record)
        self.records.append(record)

    def _write(self, entry: dict) -> None:
        self.file.write((json.dumps(entry, sort_keys=True) + "\n").encode())
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()  # releases the lock

    def __enter__(self) -> TuningLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def best_records(records: list[dict]) -> dict[str, dict]:
    """Per task, the record with the lowest cost (failed measurements have cost null)."""
    best: dict[str, dict] = {}
    for record in records:
        if record["cost"] is not None and (record["task"] not in best or record["cost"] < best[record["task"]]["cost"]):
            best[record["task"]] = record
    return best


def tuned_records(path: str | Path, model: str | Path, config: NpuConfig) -> dict[str, dict]:
    """The best record per task in `path`, if they were tuned for this model file and NPU config;
    otherwise a warning and no records (the planner's and the cascade heuristic's choices stand)."""
    head, records = read_log(path)
    problems = []
    if Path(model).is_file() and head.get("model_sha256") != file_sha256(model):
        problems.append(f"model {head.get('model')} (another file than {Path(model).name})")
    if _hardware(head.get("npu_config")) != config.hardware():
        problems.append(f"target {head.get('target')} with another hardware description than npu/{config.name}")
    if problems:
        print(f"warning: ignoring tuning records {path}: they were tuned for {' and '.join(problems)}")
        return {}
    return best_records(records)


def _hardware(npu_config) -> dict | None:
    """A header's hardware fields (`NpuConfig.hardware`): records stay valid when only a preset's
    description or citation changes, and fields added since default as NpuConfig defaults them."""
    try:
        return NpuConfig.from_dict(npu_config).hardware()
    except (TypeError, KeyError):
        return None


def tuned_tiles(best: dict[str, dict]) -> dict[str, Tiles]:
    """The tiles of the layer tasks' best records (`tuned_records`)."""
    return {key: Tiles(**record["tiles"]) for key, record in best.items() if "tiles" in record}


def warn_unmatched(path: str | Path, tuned: dict[str, Tiles], layer_keys: set[str]) -> None:
    """Records of this model whose task matches no layer (the layer geometry the tuner saw has changed
    since, e.g. with another tvm_npu) would leave those layers untuned without a word: say so."""
    unmatched = set(tuned) - layer_keys
    if unmatched:
        print(
            f"warning: {len(unmatched)} of the {len(tuned)} tuned tasks in {path} match no layer of this model "
            "(tuned by another tvm_npu version?); those layers keep the planner's tiling: rerun tvmc tune"
        )
