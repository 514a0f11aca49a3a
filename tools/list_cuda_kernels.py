"""List the CUDA code in a shared object: which GPU targets its kernels are built for.

    python tools/list_cuda_kernels.py [-v] nytorch/_C.cpython-311-x86_64-linux-gnu.so

Reads the ELF section .nv_fatbin (the fat binaries nvcc embeds, one per .cu file)
and prints one line per entry: machine code (ELF, sm_XY, with its number of kernels;
-v names them) or PTX (compute_XY), and its size; then a summary. The same as ``cuobjdump --list-elf`` and
``--list-ptx``, for machines without cuobjdump (tools/build-wheel.sh uses it then).
Exits 1 when there is no CUDA code.
"""

import struct
import sys
from typing import Dict, List, Optional, Tuple

FATBIN_MAGIC = 0xBA55ED50
KINDS = {1: "PTX", 2: "ELF"}


def sections(data: bytes) -> Dict[bytes, bytes]:
    """The sections of a 64-bit little-endian ELF image, by name."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):  # name, offset, size
        h = shoff + i * shentsize
        (nm,) = struct.unpack_from("<I", data, h)
        off, size = struct.unpack_from("<QQ", data, h + 0x18)
        return nm, off, size

    _, stroff, _ = header(shstrndx)
    out = {}
    for i in range(shnum):
        nm, off, size = header(i)
        end = data.index(b"\0", stroff + nm)
        out[data[stroff + nm : end]] = data[off : off + size]
    return out


def kernels(cubin: bytes) -> Optional[List[str]]:
    """The kernels (.text.<name> sections) of an uncompressed cubin, else None."""
    try:
        return sorted(n[len(b".text.") :].decode() for n in sections(cubin) if n.startswith(b".text."))
    except (ValueError, struct.error):
        return None


def entries(fatbin: bytes) -> List[Tuple[str, int, int, Optional[List[str]]]]:
    """(kind, arch, payload size, kernels of an ELF entry or None) of every entry of every fat binary."""
    out, pos = [], 0
    while pos + 16 <= len(fatbin):
        magic, _version, hsize, fsize = struct.unpack_from("<IHHQ", fatbin, pos)
        if magic != FATBIN_MAGIC:  # fat binaries are aligned: skip padding
            pos += 8
            continue
        e, end = pos + hsize, pos + hsize + fsize
        while e + 64 <= end:
            kind, _, ehsize, size = struct.unpack_from("<HHIQ", fatbin, e)
            (arch,) = struct.unpack_from("<I", fatbin, e + 28)
            names = kernels(fatbin[e + ehsize : e + ehsize + size]) if kind == 2 else None
            out.append((KINDS.get(kind, f"kind{kind}"), arch, size, names))
            if ehsize == 0:
                break
            e += ehsize + size
        pos = end
    return out


def main(path: str, verbose: bool = False) -> int:
    with open(path, "rb") as f:
        found = entries(sections(f.read()).get(b".nv_fatbin", b""))
    for kind, arch, size, names in found:
        target = f"sm_{arch}" if kind == "ELF" else f"compute_{arch}"
        what = "" if kind != "ELF" else ("  (compressed)" if names is None else f"  {len(names)} kernels")
        print(f"{kind:3}  {target:11} {size:9} bytes{what}")
        if verbose and names:
            print("".join(f"       {n}\n" for n in names), end="")
    sms = sorted({a for k, a, _, _ in found if k == "ELF"})
    ptx = sorted({a for k, a, _, _ in found if k == "PTX"})
    print(
        f"{len(found)} entries: machine code for {', '.join(f'sm_{a}' for a in sms) or 'nothing'}; "
        f"PTX for {', '.join(f'compute_{a}' for a in ptx) or 'nothing'}"
    )
    return 0 if found else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main([a for a in args if a != "-v"][0], "-v" in args))
