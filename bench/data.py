"""The MNIST files the benchmarks read: `MNIST_DATA_DIR`, else the full set downloaded once into the cache.

The download is `mnist-train --download`'s (same mirror and cache settings, verified checksums); a verified
cache is not fetched again.
"""

from __future__ import annotations

import os
from pathlib import Path


def mnist_dir() -> Path:
    if os.environ.get("MNIST_DATA_DIR"):
        return Path(os.environ["MNIST_DATA_DIR"])
    from training import data, settings

    env = settings.from_env()
    print(f"MNIST_DATA_DIR is not set: downloading MNIST from {env.mirror_url} into {env.cache_dir}")
    return data.download(env.mirror_url, env.cache_dir)
