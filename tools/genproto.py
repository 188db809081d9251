"""Regenerate the Python code for protos/ into client/descriptor_client/_proto/.

    python tools/genproto.py            # write the generated files in place
    python tools/genproto.py --check    # exit 1 if the committed files differ

protoc writes absolute imports (``from descriptor.v1 import descriptor_pb2``); they
are rewritten to live under ``descriptor_client._proto`` so that the generated code
ships inside the client package and cannot collide with another ``descriptor``
package. The proto's registered file name stays ``descriptor/v1/descriptor.proto``,
so reflection and other languages see the same file.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
OUT = ROOT / "client" / "descriptor_client" / "_proto"
PACKAGE = "descriptor_client._proto"
SOURCES = ["descriptor/v1/descriptor.proto"]


def generate(dest: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc into dest and return the files written, relative to dest."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{THIRD_PARTY}",
        f"-I{well_known}",
        f"--python_out={dest}",
        f"--pyi_out={dest}",
        f"--grpc_python_out={dest}",
        *SOURCES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p.relative_to(dest) for p in dest.rglob("*.py*") if p.is_file())
    for rel in written:
        path = dest / rel
        text = path.read_text()
        text = text.replace("from descriptor.v1 import", f"from {PACKAGE}.descriptor.v1 import")
        path.write_text(text)
    # Packages so that the generated modules import as descriptor_client._proto.descriptor.v1.
    for pkg in {rel.parent for rel in written} | {pathlib.Path("."), pathlib.Path("descriptor")}:
        init = dest / pkg / "__init__.py"
        init.write_text('"""Generated from protos/ by tools/genproto.py; do not edit."""\n')
        written.append(pkg / "__init__.py")
    return sorted(set(written))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = pathlib.Path(tmp)
        files = generate(tmpdir)
        if opts.check:
            stale = [
                str(rel)
                for rel in files
                if not (OUT / rel).exists() or not filecmp.cmp(tmpdir / rel, OUT / rel, shallow=False)
            ]
            if stale:
                print("generated code is stale, run: python tools/genproto.py:", *stale, file=sys.stderr)
                return 1
            return 0
        for rel in files:
            (OUT / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmpdir / rel, OUT / rel)
        print("wrote", *(str(OUT / rel) for rel in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
