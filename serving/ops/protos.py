"""Loads the official TF Serving protos and stubs (tensorflow-serving-api) without starting TensorFlow.

The `tensorflow_serving.apis` modules import `tensorflow.core.*_pb2`, and importing any of those runs
`tensorflow/__init__.py`: 5-10 s of start-up for a CLI that only sends a few small messages. The generated
`*_pb2` files need nothing from TensorFlow's runtime, so the CLI entry point (and only it: it owns its
process) registers bare package modules for `tensorflow` and `tensorflow.core` pointing at the installed
package directories; submodules then import as plain files. Library code and tests import the protos normally.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def skip_tensorflow_runtime() -> bool:
    """Make `tensorflow.*_pb2` importable without TensorFlow's runtime. False when that is not possible
    (TensorFlow already imported, or not installed): the protos then import the ordinary, slower way."""
    if "tensorflow" in sys.modules:
        return False
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = list(spec.submodule_search_locations)[0]
    for name in ("tensorflow", "tensorflow.core"):
        module = types.ModuleType(name)
        module.__path__ = [root + name[len("tensorflow") :].replace(".", "/")]
        sys.modules[name] = module
    return True
