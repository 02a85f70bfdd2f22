"""Imports TensorFlow without its native start-up lines on the console.

TensorFlow 2.21 logs through absl from C++ before absl's logging is set up, so
TF_CPP_MIN_LOG_LEVEL does not reach lines such as "oneDNN custom operations are
on" or "Could not find cuda drivers": they go straight to file descriptor 2.
They tell a user on a CPU machine nothing true about their run, so the import
runs with descriptor 2 pointed at a file, and only what is not such a line is
passed on. TF_CPP_MIN_LOG_LEVEL=3 silences what comes later (the cuInit error
of a machine without a GPU). A level the user set is kept, and with level 0 the
start-up lines are shown too.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading

_NATIVE_LINE = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions:)")
_lock = threading.Lock()


def set_quiet_environment() -> None:
    """Must run before TensorFlow is imported; child processes inherit it."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def is_native_log_line(line: str) -> bool:
    return bool(_NATIVE_LINE.match(line))


def import_tensorflow() -> None:
    """Imports tensorflow and keras once, keeping their native start-up lines off stderr."""
    set_quiet_environment()
    with _lock:
        if "keras" in sys.modules and "tensorflow" in sys.modules:
            return
        if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
            import keras  # noqa: F401 - the user asked for TensorFlow's own lines
            return
        sys.stderr.flush()
        with tempfile.TemporaryFile(mode="w+b") as captured:
            saved = os.dup(2)
            os.dup2(captured.fileno(), 2)
            try:
                import keras  # noqa: F401 - imports tensorflow, the backend
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [line for line in captured.read().decode("utf-8", "replace")
                        .splitlines(keepends=True) if not is_native_log_line(line)]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()
