"""Regenerate the Python code of the gateway's TF Serving protos (`make protos`).

Runs grpcio-tools' protoc on `gateway/tfs_protos/*.proto` (messages for every file, gRPC stubs for the two
service files), then makes one textual change to each `*_pb2.py`: it registers its descriptors in the
gateway's own pool (`_pool.py`) instead of protobuf's default pool. tests/test_protos.py checks that the
committed files are exactly what this produces.

    python -m gateway.tfs_protos.generate [OUT_ROOT]   # default: the repository root (in place)
"""

from __future__ import annotations

import sys
import tempfile
from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
PROTO_DIR = PACKAGE_DIR.relative_to(REPO_ROOT)  # gateway/tfs_protos: also the protos' import path
SERVICE_PROTOS = ("prediction_service.proto", "model_service.proto")
DEFAULT_POOL_IMPORT = "from google.protobuf import descriptor_pool as _descriptor_pool\n"
OWN_POOL_IMPORT = "from gateway.tfs_protos import _pool as _descriptor_pool\n"


def proto_files() -> list[str]:
    return sorted(str(PROTO_DIR / p.name) for p in PACKAGE_DIR.glob("*.proto"))


def generated_files(root: Path) -> dict[str, str]:
    """Name -> text of the generated modules under `root`/gateway/tfs_protos."""
    return {p.name: p.read_text() for p in sorted((root / PROTO_DIR).glob("*_pb2*.py"))}


def generate(out_root: Path) -> dict[str, str]:
    """Write the generated modules under `out_root`/gateway/tfs_protos and return them by name."""
    from grpc_tools import protoc  # a dev dependency: only needed to regenerate

    include = str(resources.files("grpc_tools") / "_proto")
    (out_root / PROTO_DIR).mkdir(parents=True, exist_ok=True)
    services = [f for f in proto_files() if Path(f).name in SERVICE_PROTOS]
    for args in (
        ["--python_out", str(out_root), *proto_files()],
        ["--grpc_python_out", str(out_root), *services],
    ):
        code = protoc.main(["protoc", f"-I{REPO_ROOT}", f"-I{include}", *args])
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
    for path in (out_root / PROTO_DIR).glob("*_pb2.py"):
        text = path.read_text()
        if DEFAULT_POOL_IMPORT not in text:
            raise RuntimeError(f"{path.name}: protoc output changed shape; update generate.py")
        path.write_text(text.replace(DEFAULT_POOL_IMPORT, OWN_POOL_IMPORT))
    return generated_files(out_root)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    out_root = Path(args[0]) if args else REPO_ROOT
    # Generate aside so that a failure leaves the committed files intact.
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    target = out_root / PROTO_DIR
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*_pb2*.py"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (target / name).write_text(text)
    print(f"generated {len(files)} modules in {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
