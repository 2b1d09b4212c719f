"""Builds the package after generating its gRPC stubs from the project's
proto files (proto/proto/concord/v1) with grpcio-tools.

The generated modules import each other as `concord.v1`; they are placed
under `concord_participant._proto` and their imports pointed there, so the
package adds no top-level `concord` module to the installing environment.

A build writes nothing into the source tree, so that `pip install
./sdk/python` works from a read-only checkout and two builds of one
checkout (the tests run several) cannot meet: the stubs are generated into
the build's own copy of the package (`build_lib`), and setuptools' `build/`
and `*.egg-info` go to a temporary directory removed when the build ends.
An editable install (`pip install -e`) is the exception: it imports the
package from `src/`, so its stubs are generated there (gitignored).
"""

from __future__ import annotations

import atexit
import pathlib
import re
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto" / "proto"
FILES = ["types.proto", "participant.proto", "coordinator.proto"]
PROTO_PACKAGE = pathlib.Path("concord_participant") / "_proto"


def generate(out: pathlib.Path) -> None:
    """Writes the stubs into `out`, the `concord_participant._proto`
    package of a build (or of src/, for an editable install)."""
    from grpc_tools import protoc  # a build requirement (pyproject.toml)

    if not (PROTO_ROOT / "concord" / "v1").is_dir():
        raise SystemExit(
            f"cannot find the proto files at {PROTO_ROOT}: build from a checkout of the "
            "Concord repository (pip install ./sdk/python)"
        )
    (out / "concord" / "v1").mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
    ] + [str(PROTO_ROOT / "concord" / "v1" / name) for name in FILES]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed on " + ", ".join(FILES))
    for path in list((out / "concord").rglob("*.py")) + list((out / "concord").rglob("*.pyi")):
        text = path.read_text()
        text = re.sub(
            r"^from concord\.v1 import",
            "from concord_participant._proto.concord.v1 import",
            text,
            flags=re.MULTILINE,
        )
        path.write_text(text)
    for package in (out, out / "concord", out / "concord" / "v1"):
        (package / "__init__.py").touch()


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        # After the sources are copied: stubs an older build left in src/
        # (it generated them there) are overwritten, not shipped.
        if self.editable_mode:
            generate(HERE / "src" / PROTO_PACKAGE)
        else:
            generate(pathlib.Path(self.build_lib) / PROTO_PACKAGE)


# setuptools' working directories, by default `build/` and
# `src/*.egg-info` in the source tree. pip runs each build step in a
# process of its own, so each gets its own directory: the metadata step
# writes its own egg-info elsewhere already (`dist_info --output-dir`).
scratch = tempfile.mkdtemp(prefix="concord-participant-build-")
atexit.register(shutil.rmtree, scratch, ignore_errors=True)

setup(
    cmdclass={"build_py": BuildWithStubs},
    options={"build": {"build_base": scratch}, "egg_info": {"egg_base": scratch}},
)
