"""The compiled package: one `.tar` holding the library and its metadata, like tvmc's.

Entry points: `write_package(path, executable, metadata)` and `read_package(path)`.
Writes are atomic (a temp file in the same folder, then a rename); reads extract only
the two expected regular files into a private temp folder and check the library's hash
against the metadata, so a package is data and is never trusted blindly.
"""

from __future__ import annotations

import hashlib
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

FORMAT_VERSION = 2  # 2: target_isa
LIBRARY_NAME = "mod.so"
METADATA_NAME = "metadata.json"
MODEL_NAME = "model.onnx"  # the ONNX the library was compiled from, for reference runs
MEMBERS = (METADATA_NAME, LIBRARY_NAME, MODEL_NAME)


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


def write_package(
    path: str | Path, executable: tvm.relax.Executable, metadata: PackageMetadata, onnx_bytes: bytes
) -> Path:
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
    """An opened package: its metadata, the loaded library and the embedded ONNX model."""

    metadata: PackageMetadata
    library: tvm.runtime.Module | None  # None when read with load_library=False
    onnx_bytes: bytes


def read_package(path: str | Path, load_library: bool = True) -> Package:
    """Opens a package; `load_library=False` reads its data only and never loads its native code."""
    path = Path(path)
    if not path.is_file():
        raise NpuError(f"package {path} does not exist; create it with `tvmc compile ... -o {path}`")
    try:
        with tarfile.open(path, mode="r:*") as tar, tempfile.TemporaryDirectory(prefix="tvm_npu_run_") as folder:
            members = {m.name: m for m in tar.getmembers()}
            if set(members) != set(MEMBERS):
                raise NpuError(
                    f"{path} is not a tvm_npu package: it must hold exactly the regular files "
                    f"{', '.join(MEMBERS)}, found {sorted(members)}; recompile it"
                )
            special = sorted(name for name, member in members.items() if not member.isfile())
            if special:
                raise NpuError(
                    f"{path} is not a tvm_npu package: {', '.join(special)} must be regular files, not links "
                    "or devices; recompile it"
                )
            # Copy the checked members by name: nothing in the archive decides where bytes land.
            for name, member in members.items():
                (Path(folder) / name).write_bytes(tar.extractfile(member).read())
            metadata = _read_metadata(Path(folder) / METADATA_NAME, path)
            library_path = Path(folder) / LIBRARY_NAME
            model_path = Path(folder) / MODEL_NAME
            if (_sha256(library_path), _sha256(model_path)) != (metadata.library_sha256, metadata.model_sha256):
                raise NpuError(f"{path}: its files do not match the package metadata (tampered or corrupt); recompile it")
            onnx_bytes = model_path.read_bytes()
            if load_library:
                check_host(metadata, str(path))
            library = _load_library(library_path, path) if load_library else None
    except tarfile.ReadError:
        raise NpuError(
            f"{path} is not a tvm_npu package (not a tar archive, or truncated); create it with `tvmc compile`"
        ) from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise NpuError(f"{path} is not a readable package ({first_line(err)}); recompile it with `tvmc compile`") from None
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
        if data.get("format_version") != FORMAT_VERSION:
            raise NpuError(
                f"{package_path} has package format {data.get('format_version')!r}, this tvm_npu reads "
                f"format {FORMAT_VERSION}; recompile it with this version"
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
