"""Builds the generated protobuf and gRPC modules into the package.

protoc (Debian: protobuf-compiler) and grpc_python_plugin (protobuf-compiler-grpc) compile the
contract in proto/ (found at ../../proto, or $MUSICGW_PROTO_DIR) into musicgw/_proto at build
time, so the installed package carries its own stubs and nobody runs protoc by hand. Imports are
rewritten to live under musicgw._proto, so the package never shadows another distribution's
google.rpc modules.
"""

import os
import pathlib
import re
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTOS = ["musicgw/v1/musicgw.proto", "google/rpc/status.proto", "google/rpc/error_details.proto"]


def proto_dir():
    for candidate in (os.environ.get("MUSICGW_PROTO_DIR"), HERE / ".." / ".." / "proto"):
        if candidate and (pathlib.Path(candidate) / PROTOS[0]).is_file():
            return pathlib.Path(candidate).resolve()
    raise SystemExit("musicgw: cannot find proto/ (set MUSICGW_PROTO_DIR to the repository's proto/)")


def generate(out):
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    if protoc is None or not os.access(plugin, os.X_OK):
        raise SystemExit("musicgw: needs protoc and grpc_python_plugin "
                         "(Debian: protobuf-compiler protobuf-compiler-grpc)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    subprocess.run([protoc, f"-I{proto_dir()}", f"--python_out={out}", f"--pyi_out={out}",
                    f"--grpc_out={out}", f"--plugin=protoc-gen-grpc={plugin}", *PROTOS],
                   check=True)
    for path in out.rglob("*"):
        if path.is_dir():
            (path / "__init__.py").touch()
        elif path.suffix in (".py", ".pyi"):
            text = path.read_text()
            text = re.sub(r"^from (google\.rpc|musicgw\.v1) import", r"from musicgw._proto.\1 import",
                          text, flags=re.M)
            path.write_text(text)
    (out / "__init__.py").touch()


class BuildPy(build_py):
    def run(self):
        generate(pathlib.Path(self.build_lib) / "musicgw" / "_proto")
        super().run()


setup(cmdclass={"build_py": BuildPy})
