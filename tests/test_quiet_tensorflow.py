"""`mnist-train` and `mnist-serve` keep TensorFlow's start-up noise off stderr, unless --verbose or an
explicit TF_CPP_MIN_LOG_LEVEL asks for it (training/quiet.py).

On a machine without a GPU TensorFlow prints, at import and at its first op, C++ log lines such as
`I0000 00:00:1796033698.868914   20196 cudart_stub.cc:31] Could not find cuda drivers on your machine` and
`E0000 ... cuda_platform.cc:52] failed call to cuInit: ... CUDA error`; loading or training a model adds
`E0000 ... node_def_util.cc:682] NodeDef mentions attribute ...`. Each such line has the prefix matched below.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.model_server import ModelServerProcess, copy_models

TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]", re.MULTILINE)
MNIST_TRAIN = Path(sys.executable).with_name("mnist-train")


def user_environment(**extra: str) -> dict[str, str]:
    """This environment as a user's shell has it: TensorFlow's log level not chosen."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, **extra}


def mnist_train(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = user_environment(**extra_env)
    return subprocess.run([str(MNIST_TRAIN), *args], capture_output=True, text=True, env=env, timeout=300)


def test_mnist_train_is_quiet_by_default_and_verbose_on_request(model_base_path):
    version = str(model_base_path / "mnist" / "1")
    quiet = mnist_train("inspect", version)
    assert quiet.returncode == 0, quiet.stderr
    assert "contract: ok" in quiet.stdout
    assert quiet.stderr == ""

    verbose = mnist_train("inspect", version, "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == quiet.stdout
    assert TF_LOG_LINE.search(verbose.stderr), verbose.stderr

    chosen = mnist_train("inspect", version, TF_CPP_MIN_LOG_LEVEL="0")
    assert chosen.returncode == 0, chosen.stderr
    assert TF_LOG_LINE.search(chosen.stderr), chosen.stderr


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
def test_mnist_serve_is_quiet_by_default_and_verbose_on_request(model_base_path, tmp_path, verbose):
    base = copy_models(model_base_path, tmp_path / "models")
    server = ModelServerProcess(
        base,
        None,
        tmp_path / "mnist-serve.log",
        extra_args=["--verbose"] if verbose else [],
        environ=user_environment(),
    )
    try:
        server.start()  # the model is loaded and warmed up: TensorFlow has run ops
    finally:
        exit_code = server.stop()
    assert exit_code == 0
    log = server.log_path.read_text()
    if verbose:
        assert TF_LOG_LINE.search(log), log
    else:
        assert not TF_LOG_LINE.search(log), log
        lines = log.splitlines()
        assert lines and all(isinstance(json.loads(line), dict) for line in lines), log
