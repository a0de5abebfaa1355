"""Generate the Python protobuf/gRPC code for every .proto file in this folder.

Run ``python proto/gen.py`` after editing a .proto file; the generated modules
are committed and never hand-edited. ``python proto/gen.py --check`` exits 1
when the committed code differs from what the .proto files produce (the test
suite runs it). The .proto files are staged under ``edgistry/proto/`` so the
generated imports read ``from edgistry.proto import x_pb2``; they are then made
relative (``from . import x_pb2``), as every import inside the package is.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = ("edgistry", "proto")
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Generate code for all .proto files into ``out_dir``; return the files made."""
    import grpc_tools
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp, *PACKAGE)
        stage.mkdir(parents=True)
        protos = sorted(HERE.glob("*.proto"))
        for proto in protos:
            shutil.copy(proto, stage / proto.name)
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{tmp}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(Path(*PACKAGE, p.name)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        made = []
        for path in sorted(stage.iterdir()):
            if path.name.endswith(SUFFIXES):
                if path.name.endswith("_pb2_grpc.py") and "class " not in path.read_text():
                    continue  # no services in this file: skip the empty stub
                target = out_dir / path.name
                target.write_text(_relative(path.read_text()))
                made.append(target)
        return made


def _relative(code: str) -> str:
    """Generated imports of sibling modules, made relative."""
    return code.replace("from " + ".".join(PACKAGE) + " import ", "from . import ")


def check() -> list[str]:
    """Names of generated files that drifted from (or are missing against) the .proto files."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        drifted = []
        for path in fresh:
            committed = HERE / path.name
            if not committed.exists() or committed.read_bytes() != path.read_bytes():
                drifted.append(path.name)
        stale = {p.name for p in HERE.iterdir() if p.name.endswith(SUFFIXES)} - {
            p.name for p in fresh
        }
        return drifted + sorted(stale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code drifted")
    args = parser.parse_args()
    if args.check:
        drifted = check()
        if drifted:
            print("generated protobuf code drifted: " + ", ".join(drifted), file=sys.stderr)
            print("run: python proto/gen.py", file=sys.stderr)
            return 1
        return 0
    for path in generate(HERE):
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
