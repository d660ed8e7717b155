"""Keep TensorFlow's C++ logs (start-up noise and all) off the terminal of `mnist-train` and `mnist-serve`.

On a machine without a GPU, TensorFlow prints lines nobody can act on: CUDA probing ("Could not find cuda
drivers", "failed call to cuInit: ... CUDA error"), CPU feature notes, NodeDef and retracing warnings. Some
are written before its own log level applies, so the import itself runs with file descriptor 2 on /dev/null.
The level stays at 3 for the whole run (at 2, training with TensorFlow 2.21 still prints a harmless
`NodeDef mentions attribute` error line), so C++ error lines are hidden too; errors raised to Python are not.
`--verbose`, or `TF_CPP_MIN_LOG_LEVEL` set in the environment, leaves everything as TensorFlow prints it.
Tensorflow-free on purpose: both CLIs call this before importing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"


def wants_quiet(verbose: bool, environ: Mapping[str, str] | None = None) -> bool:
    """Quiet unless --verbose or the user chose TensorFlow's log level in the environment."""
    environ = os.environ if environ is None else environ
    return not verbose and LOG_LEVEL_VARIABLE not in environ


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow(*, quiet: bool) -> None:
    """Import tensorflow (and keras); when quiet, with C++ logs at FATAL only and Python warnings off."""
    if not quiet:
        import keras
        import tensorflow

        return
    os.environ[LOG_LEVEL_VARIABLE] = "3"  # read by TensorFlow when it loads
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|absl|google\.protobuf)(\.|$)")
    with _stderr_to_devnull():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    # Python-side warnings TensorFlow and absl log through `logging` (retracing, deprecations).
    for name in ("tensorflow", "absl", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)
