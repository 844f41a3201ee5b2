"""The compile cache: a compile whose every input is unchanged copies its earlier package instead.

An entry is keyed by the SHA-256 of everything that decides the package: the model's bytes, the
resolved NPU configuration, every other `compile` argument (file arguments by their bytes: the
calibration data, the tuning records), the TVM version and the bytes of tvm_npu's own code and of
the kernels on $TVM_NPU_KERNEL_PATH (so an edited kernel misses, not just a new release). Entries live
in $TVM_NPU_COMPILE_CACHE if set, else $XDG_CACHE_HOME/tvm_npu/compile (default ~/.cache):
`<key>.tar` (the package) and `<key>.json` (its SHA-256, written last, so an entry without one is
incomplete). A compile holds `<key>.lock`
(fcntl.flock) while it looks up or fills its entry: a concurrent compile of the same model waits and
then copies the entry the first one wrote. An entry whose bytes no longer match its hash is removed and
rebuilt, never copied. The quantize stage of a cached compile caches its QDQ model the same way, under
`quantize/`, keyed by the model at its fixed shapes and the calibration data's hash (`cached_quantization`):
a compile that misses (another target, new tuning records, one more shape bucket) skips NNCF.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import tvm

from .atomic import atomic_output
from .errors import first_line
from .records import file_sha256
from .registry import kernel_path_files
from .host import host_target
from .target import NpuConfig, resolve_target

# Arguments naming input files: keyed by their bytes. `output` only says where the copy goes.
FILE_ARGUMENTS = ("model", "calibration_data", "tuning_records")
NOT_IN_KEY = ("output",)


# Names the cache folder outright (a shared CI cache; the test suite's own folder), else the XDG default.
CACHE_DIR_VARIABLE = "TVM_NPU_COMPILE_CACHE"


def cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_VARIABLE):
        return Path(os.environ[CACHE_DIR_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tvm_npu" / "compile"


def cached(arguments: dict, build: Callable[[Path], dict[str, float]]) -> dict[str, float]:
    """Writes the package of `compile(**arguments)` to `arguments["output"]`, from the cache when an
    entry for the same inputs is there, else by `build(path)` (which compiles into `path` and returns
    its stage seconds) into a new entry first. Returns the stage seconds, `cache` for the copy.

    A compile the cache cannot hold runs uncached: one that also writes the quantized model
    (`save_quantized`), or one whose input file is missing (the compile then names the problem)."""
    output = Path(arguments["output"])
    key = cache_key(arguments) if arguments.get("save_quantized") is None else None
    if key is None:
        return build(output)
    entry = Entry(cache_dir(), key)
    try:
        entry.folder.mkdir(parents=True, exist_ok=True)
        entry.lock_path.touch()
    except OSError as err:
        print(
            f"warning: cannot use the compile cache {entry.folder} ({first_line(err)}); compiling without it "
            f"(set ${CACHE_DIR_VARIABLE} to a writable folder, or pass --no-cache)",
            file=sys.stderr,
        )
        return build(output)
    with entry.locked():
        start = time.perf_counter()
        if entry.copy_to(output):
            return {"cache": time.perf_counter() - start}
        seconds = build(entry.package)
        entry.seal(
            {
                "model": str(Path(arguments["model"]).resolve()),
                "target": resolve_target(arguments["target"]).name,
                "compile_seconds": round(sum(seconds.values()), 3),
            }
        )
        start = time.perf_counter()
        if not entry.copy_to(output):
            raise OSError(f"compile cache entry {entry.package} changed while it was being copied")
        return {**seconds, "cache": time.perf_counter() - start}


def cache_key(arguments: dict) -> str | None:
    """The SHA-256 naming `arguments`' entry; None when an input file cannot be read."""
    keyed = {}
    for name, value in sorted(arguments.items()):
        if name in NOT_IN_KEY:
            continue
        if name in FILE_ARGUMENTS and value is not None:
            if not Path(value).is_file():
                return None
            value = file_sha256(Path(value))
        elif name == "target":
            value = resolve_target(value).to_dict()
        elif name == "target_host":
            value = host_target(value)  # `native` and the default named by the CPU they stand for here
        keyed[name] = value
    keyed["versions"] = {"tvm": tvm.__version__, "tvm_npu_code": code_digest()}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=_jsonable).encode()).hexdigest()


def code_digest() -> str:
    """The SHA-256 over tvm_npu's files and the kernel files on $TVM_NPU_KERNEL_PATH."""
    package = Path(__file__).parent
    files = sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for path in [*files, *kernel_path_files()]:
        digest.update(f"{path.relative_to(package) if path.is_relative_to(package) else path}\0".encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def _jsonable(value):
    if isinstance(value, NpuConfig):
        return value.to_dict()
    return str(value)  # Path and other plain values


def cached_quantization(
    model: onnx.ModelProto, calibration_data: str | Path | None, settings: dict, quantize: Callable[[], onnx.ModelProto]
) -> onnx.ModelProto:
    """The quantized (QDQ) model of `quantize()`, from the cache when the same model (by its bytes at the fixed
    shapes) was quantized before with the same calibration data (by its SHA-256; None: seeded random inputs)
    and `settings` (seed, overflow fix) by this tvm_npu; entries live in the `quantize/` folder of the cache."""
    keyed = {
        "model": hashlib.sha256(model.SerializeToString()).hexdigest(),
        "settings": settings,
        "calibration": None if calibration_data is None else file_sha256(Path(calibration_data)),
        "versions": {"tvm": tvm.__version__, "tvm_npu_code": code_digest()},
    }
    entry = Entry(cache_dir() / QUANTIZE_FOLDER, hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest(), ".onnx")
    try:
        entry.folder.mkdir(parents=True, exist_ok=True)
        entry.lock_path.touch()
    except OSError as err:
        print(
            f"warning: cannot use the quantization cache {entry.folder} ({first_line(err)}); quantizing without it",
            file=sys.stderr,
        )
        return quantize()
    with entry.locked():
        data = entry.read()
        if data is not None:
            return onnx.load_from_string(data)
        quantized = quantize()
        with atomic_output(entry.package) as stream:
            stream.write(quantized.SerializeToString())
        entry.seal({"model": model.graph.name, "target": "-"})
        return quantized


QUANTIZE_FOLDER = "quantize"  # quantized models, beside the packages


@dataclass(frozen=True)
class Entry:
    folder: Path
    key: str
    suffix: str = ".tar"  # the package; ".onnx": a quantized model

    @property
    def package(self) -> Path:
        return self.folder / f"{self.key}{self.suffix}"

    @property
    def seal_path(self) -> Path:
        return self.folder / f"{self.key}.json"

    @property
    def lock_path(self) -> Path:
        return self.folder / f"{self.key}.lock"

    @contextlib.contextmanager
    def locked(self, blocking: bool = True) -> Iterator[bool]:
        """Holds the entry's lock (yields False without waiting when `blocking` is off and it is taken)."""
        with open(self.lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def info(self) -> dict | None:
        try:
            return json.loads(self.seal_path.read_text())
        except (OSError, ValueError):
            return None

    def seal(self, description: dict) -> None:
        """Records the package's hash (and what it was compiled from): the entry is complete."""
        info = {
            "sha256": file_sha256(self.package),
            "bytes": self.package.stat().st_size,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            **description,
        }
        with atomic_output(self.seal_path) as stream:
            stream.write(json.dumps(info, indent=2).encode())

    def read(self) -> bytes | None:
        """The entry's bytes if it is complete and they match its hash; otherwise None, the entry removed
        (saying so if it was corrupt)."""
        info = self.info()
        if info is None or not self.package.is_file():
            self.remove()
            return None
        data = self.package.read_bytes()
        if hashlib.sha256(data).hexdigest() != info.get("sha256"):
            print(
                f"warning: compile cache entry {self.package} is corrupt (its hash does not match); rebuilding it",
                file=sys.stderr,
            )
            self.remove()
            return None
        return data

    def copy_to(self, output: Path) -> bool:
        """Copies the package to `output` atomically if `read` finds it whole; False otherwise."""
        data = self.read()
        if data is None:
            return False
        with atomic_output(output) as stream:
            stream.write(data)
        return True

    def remove(self) -> None:
        for path in (self.seal_path, self.package):  # the seal first: a half-removed entry is incomplete
            path.unlink(missing_ok=True)


def entries(folder: Path | None = None) -> list[Entry]:
    """The packages in `folder` (default: the cache), then the quantized models in its `quantize/`."""
    folder = cache_dir() if folder is None else folder
    found = []
    for where, suffix in ((folder, ".tar"), (folder / QUANTIZE_FOLDER, ".onnx")):
        keys = {path.stem for path in where.glob(f"*{suffix}")} | {path.stem for path in where.glob("*.json")}
        found += [Entry(where, key, suffix) for key in sorted(keys)]
    return found


def list_text() -> str:
    """`tvmc cache list`: one line per entry, then the total."""
    folder = cache_dir()
    lines = []
    total = 0
    for entry in entries(folder):
        info = entry.info() or {}
        size = entry.package.stat().st_size if entry.package.is_file() else 0
        total += size
        state = "" if info else "  (incomplete)"
        kind = "quantized" if entry.suffix == ".onnx" else "package"
        lines.append(
            f"{entry.key[:16]}  {kind:<9}  {size / 1e6:7.2f} MB  {info.get('created', '?'):<19}  "
            f"npu/{info.get('target', '?'):<6}  {info.get('model', '?')}{state}"
        )
    lines.append(f"{len(lines)} entries, {total / 1e6:.2f} MB in {folder}")
    return "\n".join(lines)


def clear() -> str:
    """`tvmc cache clear`: removes every entry no compile holds right now; says what it did."""
    folder = cache_dir()
    removed, busy, freed = 0, 0, 0
    for entry in entries(folder):
        with entry.locked(blocking=False) as held:
            if not held:
                busy += 1
                continue
            freed += entry.package.stat().st_size if entry.package.is_file() else 0
            entry.remove()  # its lock file stays: unlinking it could give two compiles two locks
            removed += 1
    note = f" ({busy} in use by a running compile left alone)" if busy else ""
    return f"removed {removed} entries ({freed / 1e6:.2f} MB) from {folder}{note}"
