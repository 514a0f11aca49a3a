"""Give a built wheel its local version tag and its torch pin (tools/build-wheel.sh).

    python tools/wheel_meta.py IN.whl OUTDIR --local torch2.13cpu --torch "torch==2.13.*"

Writes OUTDIR/<name>-<version>+<local>-<tags>.whl: the .dist-info folder renamed,
METADATA's Version and its torch Requires-Dist replaced, RECORD rewritten with
the new hashes. Prints the new wheel's path.
"""

import argparse
import base64
import hashlib
import os
import re
import sys
import zipfile


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def retag(src: str, outdir: str, local: str, torch_req: str) -> str:
    name, version, rest = os.path.basename(src).split("-", 2)
    base = version.split("+")[0]
    new_version = f"{base}+{local}"
    old_info, new_info = f"{name}-{version}.dist-info", f"{name}-{new_version}.dist-info"
    out = os.path.join(outdir, f"{name}-{new_version}-{rest}")
    with zipfile.ZipFile(src) as zin:
        files = [(i, zin.read(i.filename)) for i in zin.infolist()]
    entries = []
    for info, data in files:
        path = info.filename
        if path.startswith(old_info + "/"):
            path = new_info + path[len(old_info) :]
        if path == f"{new_info}/METADATA":
            text = data.decode()
            text = re.sub(r"^Version: .*$", f"Version: {new_version}", text, count=1, flags=re.M)
            text, n = re.subn(r"^Requires-Dist: torch\b[^;\n]*", f"Requires-Dist: {torch_req}", text, flags=re.M)
            if n != 1:
                sys.exit(f"wheel_meta: expected one torch Requires-Dist in METADATA, found {n}")
            data = text.encode()
        entries.append((info, path, data))
    record = f"{new_info}/RECORD"
    lines = [f"{p},{_digest(d)},{len(d)}" for _, p, d in entries if p != record] + [f"{record},,"]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info, path, data in entries:
            if path == record:
                data = ("\n".join(lines) + "\n").encode()
            zi = zipfile.ZipInfo(path, date_time=info.date_time)
            zi.external_attr = info.external_attr
            zi.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(zi, data)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel")
    ap.add_argument("outdir")
    ap.add_argument("--local", required=True, help="local version tag, e.g. torch2.13cpu")
    ap.add_argument("--torch", required=True, help='the torch requirement, e.g. "torch==2.13.*"')
    a = ap.parse_args()
    print(retag(a.wheel, a.outdir, a.local, a.torch))
