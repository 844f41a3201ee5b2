"""tvm_npu: an INT8 NPU compiler backend for Apache TVM."""

import re
from pathlib import Path

from setuptools import setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("tvm_npu/version.py").read_text())[1]

setup(
    name="tvm_npu",
    version=VERSION,
    description="An INT8 NPU compiler backend for Apache TVM: tiled SRAM schedules, a performance model, OpenVINO validation",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    # schedules/ sits at the top of the repository (one file per NPU kernel) and installs as tvm_npu.schedules.
    packages=["tvm_npu", "tvm_npu.schedules", "tvm_npu.passes"],
    package_dir={"tvm_npu": "tvm_npu", "tvm_npu.schedules": "schedules"},
    package_data={"tvm_npu": ["data/*.onnx"]},
    install_requires=[
        # 0.27 is the newest TVM for Python 3.11; ffi 0.1.15+ segfaults inside meta_schedule.
        "apache-tvm==0.27.0.post1",
        "apache-tvm-ffi==0.1.14.post0",
        "onnx==1.23.2",
        "openvino==2026.4.1",
        "nncf==3.4.0",  # post-training quantization: OpenVINO's own quantizer, emitting QDQ ONNX
        "tflite==2.18.0",  # TFLite's flatbuffer schema in Python: TVM's TFLite frontend reads .tflite files with it
        "numpy>=2.0,<3",
        "scipy>=1.13",
        "xgboost-cpu>=2.1",  # meta_schedule's xgb cost model; the CPU wheel skips 470 MB of CUDA
        "psutil",  # meta_schedule
        "cloudpickle",  # TVM's popen pool and RPC
        "tornado",  # TVM's RPC tracker
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # tvmc validate's fallback reference when OpenVINO cannot run a model; TFLite's own interpreter for .tflite
        "validate": ["onnxruntime", "ai-edge-litert==2.3.0"],
        # Arm's Vela, the independent check of the performance model (scripts/compare_vela.py): a 2 MB manylinux
        # wheel needing only numpy and flatbuffers, installed in 2.5 s here.
        "vela": ["ethos-u-vela==5.2.0"],
        # ruff: ruff.toml, run by scripts/test.sh
        "test": ["pytest>=8", "onnxruntime", "ai-edge-litert==2.3.0", "scikit-learn", "ruff==0.17.6", "ethos-u-vela==5.2.0"],
    },
    entry_points={
        "console_scripts": [
            "tvmc=tvm_npu.cli:main",
            "tvm-npu=tvm_npu.cli:main",
        ]
    },
)
