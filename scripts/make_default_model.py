"""(Re)write tvm_npu/data/default_model.onnx from tvm_npu.zoo.make_default_model().

The output is deterministic, so tests can check that the committed file is not stale.
"""

import argparse

from tvm_npu.atomic import atomic_output
from tvm_npu.zoo import default_model_path, make_default_model


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    with atomic_output(default_model_path()) as stream:
        stream.write(make_default_model().SerializeToString())
    print(f"wrote {default_model_path()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
