"""Builds the package after generating its gRPC stubs from the project's
proto files (proto/proto/concord/v1) with grpcio-tools.

The generated modules import each other as `concord.v1`; they are placed
under `concord_participant._proto` and their imports pointed there, so the
package adds no top-level `concord` module to the installing environment.
"""

from __future__ import annotations

import pathlib
import re

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto" / "proto"
OUT = HERE / "src" / "concord_participant" / "_proto"
FILES = ["types.proto", "participant.proto", "coordinator.proto"]


def generate() -> None:
    from grpc_tools import protoc  # a build requirement (pyproject.toml)

    if not (PROTO_ROOT / "concord" / "v1").is_dir():
        raise SystemExit(
            f"cannot find the proto files at {PROTO_ROOT}: build from a checkout of the "
            "Concord repository (pip install ./sdk/python)"
        )
    (OUT / "concord" / "v1").mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
    ] + [str(PROTO_ROOT / "concord" / "v1" / name) for name in FILES]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed on " + ", ".join(FILES))
    for path in list((OUT / "concord").rglob("*.py")) + list((OUT / "concord").rglob("*.pyi")):
        text = path.read_text()
        text = re.sub(
            r"^from concord\.v1 import",
            "from concord_participant._proto.concord.v1 import",
            text,
            flags=re.MULTILINE,
        )
        path.write_text(text)
    for package in (OUT, OUT / "concord", OUT / "concord" / "v1"):
        (package / "__init__.py").touch()


class BuildWithStubs(build_py):
    def run(self) -> None:
        generate()
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
