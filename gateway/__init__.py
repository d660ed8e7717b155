"""The gateway: a thin Flask service in front of the model server, logging every prediction to Cassandra.

`gateway.app.create_app()` builds it; `mnist-gateway` (gateway/server.py) runs it under Granian.
It never imports tensorflow: the few TF Serving messages it needs are in gateway/tfs_protos/.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mnist-stack")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
