"""Write a copy of an ONNX model with seeded random weights (tvm_npu.zoo.randomize_weights).

IN is an .onnx file or the name of one of onnx's bundled light models (e.g. squeezenet).
"""

import argparse
import pathlib
import sys

import onnx
from google.protobuf.message import DecodeError

from tvm_npu.atomic import atomic_output
from tvm_npu.errors import EXIT_BAD_INPUT, EXIT_OK, NpuError, first_line
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
    source = light_model_path(name) if name in LIGHT_MODELS else pathlib.Path(name)
    if not source.exists():
        raise NpuError(f"{name} is neither a file nor a light model ({', '.join(LIGHT_MODELS)})")
    try:
        model = onnx.load(source)
        onnx.checker.check_model(model)
    except OSError as err:
        raise NpuError(f"cannot read {source}: {err.strerror or first_line(err)}") from err
    except (DecodeError, onnx.checker.ValidationError) as err:
        raise NpuError(f"{source} is not a valid ONNX model: {first_line(err)}") from err
    return model


if __name__ == "__main__":
    raise SystemExit(main())
