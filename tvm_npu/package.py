"""The compiled package: one `.tar` holding the library and its metadata, like tvmc's.

Entry points: `write_package(path, executable, metadata)` and `read_package(path)`.
Writes are atomic (a temp file in the same folder, then a rename); reads extract only
the two expected regular files into a private temp folder and check the library's hash
against the metadata, so a package is data and is never trusted blindly.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm

from .atomic import atomic_output
from .errors import NpuError, first_line
from .frontend import TensorSpec
from .host import check_host
from .target import NpuConfig

FORMAT_VERSION = 2  # a single-shape package; 2: records target_isa, the CPU features its library needs
BUCKETS_FORMAT_VERSION = 3  # shape buckets: one library and model per bucket under buckets/<i>/
LIBRARY_NAME = "mod.so"
METADATA_NAME = "metadata.json"
MODEL_NAME = "model.onnx"  # the ONNX the library was compiled from, for reference runs
MEMBERS = (METADATA_NAME, LIBRARY_NAME, MODEL_NAME)
WEIGHTS_NAME = "weights.npz"  # bucketed packages: kernel constants, each stored once for every bucket
SOURCE_NAME = "source.onnx"  # bucketed packages: the model as given, for reference runs at unpadded sizes
BUCKETS_FOLDER = "buckets"


@dataclass
class PackageMetadata:
    """Everything a runner needs to call the library, plus what it was built from and for."""

    model_name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    npu_config: NpuConfig
    target: dict  # the exported TVM target
    target_isa: list[str]  # the ISA features its library needs (tvm_npu.host.required_isa)
    versions: dict  # tvm_npu, tvm
    model_sha256: str = ""
    library_sha256: str = ""  # both hashes are set by write_package and checked by read_package
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # later stages' records (layers, reports)

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "model_name": self.model_name,
            "model_sha256": self.model_sha256,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "npu_config": self.npu_config.to_dict(),
            "target": self.target,
            "target_isa": self.target_isa,
            "versions": self.versions,
            "library_sha256": self.library_sha256,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PackageMetadata:
        return cls(
            model_name=data["model_name"],
            inputs=[TensorSpec.from_dict(d) for d in data["inputs"]],
            outputs=[TensorSpec.from_dict(d) for d in data["outputs"]],
            npu_config=NpuConfig.from_dict(data["npu_config"]),
            target=data["target"],
            target_isa=[str(feature) for feature in data["target_isa"]],
            versions=data["versions"],
            model_sha256=data["model_sha256"],
            library_sha256=data["library_sha256"],
            format_version=data["format_version"],
            extra=data.get("extra", {}),
        )


def write_package(path: str | Path, executable: tvm.relax.Executable, metadata: PackageMetadata, onnx_bytes: bytes) -> Path:
    """Writes `path` atomically: either the complete package exists afterwards or nothing new does."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="tvm_npu_pkg_") as staging:
        staged = Path(staging)
        executable.export_library(str(staged / LIBRARY_NAME))
        (staged / MODEL_NAME).write_bytes(onnx_bytes)
        metadata.library_sha256 = _sha256(staged / LIBRARY_NAME)
        metadata.model_sha256 = _sha256(staged / MODEL_NAME)
        (staged / METADATA_NAME).write_text(json.dumps(metadata.to_dict(), indent=2))
        with atomic_output(path) as stream, tarfile.open(fileobj=stream, mode="w") as tar:
            for name in MEMBERS:
                tar.add(staged / name, arcname=name)
    return path


@dataclass
class Package:
    """An opened package: its metadata, the loaded library and the embedded ONNX model. A bucketed package
    (format 3) has no library of its own: `buckets` holds one such package per bucket, and `source_onnx`
    the model as the user gave it (validation's reference at unpadded sizes)."""

    metadata: PackageMetadata
    library: tvm.runtime.Module | None  # None when read with load_library=False
    onnx_bytes: bytes
    buckets: list[Package] = field(default_factory=list)
    source_onnx: bytes | None = None
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # the buckets' shared kernel constants


def write_bucket_package(
    path: str | Path, bucket_packages: list[Path], source_onnx: bytes, bucketing: dict, weights: dict[str, np.ndarray]
) -> Path:
    """Writes one bucketed package from the packages compiled for each bucket (smallest first): their files
    under `buckets/<i>/`, the source model, the kernels' constants lifted out of their libraries (by content:
    `tvm_npu.buckets.lift_weights`; each stored once) and metadata whose top level describes the largest bucket."""
    path = Path(path)
    buckets = []
    with atomic_output(path) as stream, tarfile.open(fileobj=stream, mode="w") as out:
        for index, bucket_path in enumerate(bucket_packages):
            with tarfile.open(bucket_path) as tar:
                buckets.append(json.loads(tar.extractfile(METADATA_NAME).read()))
                for name in (LIBRARY_NAME, MODEL_NAME):
                    _add_bytes(out, f"{BUCKETS_FOLDER}/{index}/{name}", tar.extractfile(name).read())
        _add_bytes(out, SOURCE_NAME, source_onnx)
        arrays = io.BytesIO()
        np.savez(arrays, **weights)
        _add_bytes(out, WEIGHTS_NAME, arrays.getvalue())
        metadata = {
            **buckets[-1],
            "format_version": BUCKETS_FORMAT_VERSION,
            "library_sha256": "",
            "model_sha256": hashlib.sha256(source_onnx).hexdigest(),
            "extra": {
                **buckets[-1]["extra"],
                "bucketing": bucketing,
                "buckets": buckets,
                "weights_sha256": hashlib.sha256(arrays.getvalue()).hexdigest(),
            },
        }
        _add_bytes(out, METADATA_NAME, json.dumps(metadata, indent=2).encode())
    return path


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _members(version: int, metadata: dict) -> set[str]:
    if version != BUCKETS_FORMAT_VERSION:
        return set(MEMBERS)
    count = len(metadata["extra"]["buckets"])
    return {METADATA_NAME, SOURCE_NAME, WEIGHTS_NAME} | {
        f"{BUCKETS_FOLDER}/{i}/{name}" for i in range(count) for name in (LIBRARY_NAME, MODEL_NAME)
    }


def read_package(path: str | Path, load_library: bool = True) -> Package:
    """Opens a package; `load_library=False` reads its data only and never loads its native code."""
    path = Path(path)
    if not path.is_file():
        raise NpuError(f"package {path} does not exist; create it with `tvmc compile ... -o {path}`")
    try:
        with tarfile.open(path, mode="r:*") as tar, tempfile.TemporaryDirectory(prefix="tvm_npu_run_") as folder:
            members = {m.name: m for m in tar.getmembers()}
            special = sorted(name for name, member in members.items() if not member.isfile())
            if special:
                raise NpuError(
                    f"{path} is not a tvm_npu package: {', '.join(special)} must be regular files, not links "
                    "or devices; recompile it"
                )
            if METADATA_NAME not in members:
                raise NpuError(f"{path} is not a tvm_npu package: it holds no {METADATA_NAME}; recompile it")
            # Copy the checked members by name: nothing in the archive decides where bytes land.
            (Path(folder) / METADATA_NAME).write_bytes(tar.extractfile(members[METADATA_NAME]).read())
            metadata = _read_metadata(Path(folder) / METADATA_NAME, path)
            expected = _members(metadata.format_version, metadata.to_dict())
            if set(members) != expected:
                raise NpuError(
                    f"{path} is not a tvm_npu package: it must hold exactly the regular files "
                    f"{', '.join(sorted(expected))}, found {sorted(members)}; recompile it"
                )
            if metadata.format_version == BUCKETS_FORMAT_VERSION:
                source = tar.extractfile(members[SOURCE_NAME]).read()
                arrays = tar.extractfile(members[WEIGHTS_NAME]).read()
                if (hashlib.sha256(source).hexdigest(), hashlib.sha256(arrays).hexdigest()) != (
                    metadata.model_sha256,
                    metadata.extra["weights_sha256"],
                ):
                    raise NpuError(f"{path}: its files do not match the package metadata (tampered or corrupt); recompile it")
                buckets = [
                    _bucket(tar, members, i, PackageMetadata.from_dict(data), folder, path, load_library)
                    for i, data in enumerate(metadata.extra["buckets"])
                ]
                with np.load(io.BytesIO(arrays), allow_pickle=False) as archive:
                    weights = {name: archive[name] for name in archive.files}
                return Package(metadata, None, buckets[-1].onnx_bytes, buckets, source, weights)
            return _bucket(tar, members, None, metadata, folder, path, load_library)
    except tarfile.ReadError:
        raise NpuError(
            f"{path} is not a tvm_npu package (not a tar archive, or truncated); create it with `tvmc compile`"
        ) from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise NpuError(f"{path} is not a readable package ({first_line(err)}); recompile it with `tvmc compile`") from None


def _bucket(
    tar: tarfile.TarFile, members: dict, index: int | None, metadata: PackageMetadata, folder: str, path: Path, load_library: bool
) -> Package:
    """The library and model of a single-shape package, or of bucket `index` of a bucketed one."""
    prefix = "" if index is None else f"{BUCKETS_FOLDER}/{index}/"
    library_path = Path(folder) / f"{index or 0}_{LIBRARY_NAME}"
    library_path.write_bytes(tar.extractfile(members[prefix + LIBRARY_NAME]).read())
    onnx_bytes = tar.extractfile(members[prefix + MODEL_NAME]).read()
    if (_sha256(library_path), hashlib.sha256(onnx_bytes).hexdigest()) != (metadata.library_sha256, metadata.model_sha256):
        raise NpuError(f"{path}: its files do not match the package metadata (tampered or corrupt); recompile it")
    if load_library:
        check_host(metadata, str(path))
    library = _load_library(library_path, path) if load_library else None
    return Package(metadata, library, onnx_bytes)


def _load_library(library_path: Path, package_path: Path) -> tvm.runtime.Module:
    # dlopen keeps the mapping alive after the temp folder is removed.
    try:
        return tvm.runtime.load_module(str(library_path))
    except Exception as err:  # noqa: BLE001 - dlopen/TVM report many kinds
        raise NpuError(
            f"{package_path}: its library cannot be loaded on this host "
            f"({first_line(err).replace(str(library_path), LIBRARY_NAME)}); "
            "recompile the model on this machine"
        ) from None


def _read_metadata(metadata_path: Path, package_path: Path) -> PackageMetadata:
    try:
        data = json.loads(metadata_path.read_text())
        if data.get("format_version") not in (FORMAT_VERSION, BUCKETS_FORMAT_VERSION):
            raise NpuError(
                f"{package_path} has package format {data.get('format_version')!r}, this tvm_npu reads "
                f"formats {FORMAT_VERSION} and {BUCKETS_FORMAT_VERSION}; recompile it with this version"
            )
        metadata = PackageMetadata.from_dict(data)
        for spec in metadata.inputs + metadata.outputs:
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in spec.shape):
                raise ValueError(f"{spec.name!r} has shape {list(spec.shape)}, not non-negative integers")
            np.dtype(spec.dtype)
        metadata.npu_config.check(f"the metadata of {package_path}")
        return metadata
    except NpuError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise NpuError(f"{package_path} has invalid metadata ({first_line(err)}); recompile it") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
