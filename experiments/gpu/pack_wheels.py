"""Pack NNI 3.0 (without its experiment manager) and the small requirements the GPU image lacks as wheels.

Nothing is downloaded: each wheel is rebuilt from the files of the distribution installed in this environment
(``importlib.metadata``), as ``NAME-VERSION-py3-none-any.whl``. NNI loses ``nni_node/`` (the bundled Node.js
experiment manager, ~60 MB; one-shot training does not use it) and its ``RECORD`` lines.
Compiled extensions are left out: every package packed here is pure Python, or (``websockets``, ``wcwidth``) has a
pure-Python fallback for its optional speed-ups, so the wheels install on the GPU image's Python 3.12.

    python -m experiments.gpu.pack_wheels            # writes experiments/gpu/wheels/*.whl

``experiments/gpu/run.sh`` installs whatever lies there with ``pip install --no-index --no-deps``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as md
import zipfile
from pathlib import Path

#: NNI and its requirements absent from the GPU image (Python 3.12, torch 2.11), plus prettytable's wcwidth
PACKAGES = ("nni", "astor", "json-tricks", "prettytable", "wcwidth", "PythonWebHDFS", "responses", "schema",
            "typeguard", "websockets")
_SKIP_SUFFIXES = (".so", ".pyd", ".pyc", ".dylib")


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _keep(dist_name: str, rel: str) -> bool:
    if rel.endswith(_SKIP_SUFFIXES) or "__pycache__" in rel or rel.startswith(".."):
        return False
    if dist_name == "nni" and (rel.startswith("nni_node/") or rel == "nni_node"):
        return False
    return not rel.endswith(("/RECORD", "/INSTALLER", "/REQUESTED", "/direct_url.json", "/WHEEL"))


def pack(name: str, out: Path) -> Path:
    """Rebuild the installed distribution ``name`` as a pure-Python wheel in ``out``; returns its path."""
    dist = md.distribution(name)
    project = dist.metadata["Name"].replace("-", "_")
    version = dist.version
    info = f"{project}-{version}.dist-info"
    source_info = next((str(f).split("/")[0] for f in dist.files or [] if str(f).endswith(".dist-info/METADATA")),
                       None)
    path = out / f"{project}-{version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        for f in dist.files or []:
            rel = str(f)
            if not _keep(name, rel):
                continue
            local = Path(dist.locate_file(f))
            if not local.is_file():
                continue
            data = local.read_bytes()
            arc = rel if source_info is None or not rel.startswith(source_info + "/") else \
                info + rel[len(source_info):]
            whl.writestr(arc, data)
            records.append(f"{arc},{_hash(data)},{len(data)}")
        wheel = f"Wheel-Version: 1.0\nGenerator: hwnas pack_wheels\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        whl.writestr(f"{info}/WHEEL", wheel)
        records.append(f"{info}/WHEEL,{_hash(wheel.encode())},{len(wheel)}")
        records.append(f"{info}/RECORD,,")
        whl.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu.pack_wheels", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "wheels"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        path = pack(name, out)
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
