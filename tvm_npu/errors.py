"""The one exception type the pipeline raises for problems a user can fix.

Every stage raises `NpuError` with a one-line message that names the problem and
the fix; the CLI prints it and exits with its code. Anything else escaping a stage
is a bug in tvm_npu or TVM and is reported as an internal error.
"""

# Documented exit codes of every `tvmc` subcommand (see README "Exit codes").
EXIT_OK = 0
EXIT_VALIDATION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_COULD_NOT_VALIDATE = 3
EXIT_INTERNAL_ERROR = 4


class NpuError(Exception):
    """A user-facing error: `str(err)` is the one line printed to stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(err: BaseException) -> str:
    """The first line of an exception's message: TVM errors carry multi-line context."""
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def one_line(err: BaseException, limit: int = 300) -> str:
    """All of a message that spans several lines (onnx's checker does) on one line, capped at `limit`."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."
