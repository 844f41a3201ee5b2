"""Write a copy of an ONNX model with seeded random weights (tvm_npu.zoo.randomize_weights).

IN is an .onnx file or the name of one of onnx's bundled light models (e.g. squeezenet).
"""

import argparse
import pathlib
import sys

import onnx

from tvm_npu.atomic import atomic_output
from tvm_npu.errors import EXIT_BAD_INPUT, EXIT_OK, NpuError, first_line
from tvm_npu.frontend import read_onnx
from tvm_npu.zoo import LIGHT_MODELS, light_model_path, randomize_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", metavar="IN", help=f".onnx file or one of: {', '.join(LIGHT_MODELS)}")
    parser.add_argument("output", metavar="OUT", help="where to write the randomized model")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        model = _load(args.input)
        with atomic_output(args.output) as stream:
            stream.write(randomize_weights(model, args.seed).SerializeToString())
    except NpuError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"error: cannot write {args.output}: {err.strerror or first_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.output}")
    return EXIT_OK


def _load(name: str) -> onnx.ModelProto:
    """A light model by name, or an ONNX file."""
    return read_onnx(light_model_path(name) if name in LIGHT_MODELS else pathlib.Path(name))


if __name__ == "__main__":
    raise SystemExit(main())
