"""Holding what native code writes to file descriptor 2 while a
`keras-slim` command runs, so that a failure stays one line (cli.py)."""

import contextlib
import io
import os
import sys
import tempfile

# Native lines every run prints on a machine without a GPU, whatever
# `TF_CPP_MIN_LOG_LEVEL` says: not replayed after a successful command
# (a clean run must not end on "E0000 ... failed call to cuInit").
_ROUTINE = (
    "All log messages before absl::InitializeLog()",
    "cudart_stub.cc",
    "cuda_platform.cc",
    "cuda_executor.cc",
    "cpu_feature_guard.cc",
    "oneDNN custom operations are on",
    "To enable the following instructions",
    "Created TensorFlow Lite XNNPACK delegate",
    "fully_quantize: ",
    "Estimated count of arithmetic ops",
)


def worth_replaying(data):
    """The lines of `data` (bytes) that are not `_ROUTINE`."""
    lines = data.decode(errors="replace").splitlines(keepends=True)
    kept = [ln for ln in lines if not any(r in ln for r in _ROUTINE)]
    return "".join(kept).encode()


@contextlib.contextmanager
def native_stderr_held():
    """Hold what native code writes to file descriptor 2 while a command
    runs (TensorFlow 2.21's absl and oneDNN lines, whatever
    `TF_CPP_MIN_LOG_LEVEL` says; the converter's and LiteRT's prints):
    replayed when the command succeeds, but for the routine lines every
    run prints (`_ROUTINE`), dropped when it fails, so that a failure
    stays one line. Python's `sys.stderr` keeps writing live."""
    try:
        sys.stderr.flush()
        python_stderr = sys.stderr.fileno() == 2
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        yield lambda: None  # no file descriptor 2 to hold (embedded)
        return
    original = sys.stderr
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        if python_stderr:
            sys.stderr = open(os.dup(saved), "w")  # noqa: SIM115

        def replay():
            sink.seek(0)
            os.write(saved, worth_replaying(sink.read()))

        try:
            yield replay
        finally:
            if python_stderr:
                sys.stderr.close()
                sys.stderr = original
            os.dup2(saved, 2)
            os.close(saved)
