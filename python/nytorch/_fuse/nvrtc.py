"""NVRTC and the CUDA driver, opened at run time (never linked).

nytorch's CPU build and wheel carry no CUDA at all; the code generator of
``nytorch.fuse`` (``nytorch/_fuse/codegen.py``) compiles its kernels with the libnvrtc
that CUDA torch wheels bring (``nvidia/cu13/lib`` or ``nvidia/cu12/lib`` in
site-packages, or the CUDA toolkit), found at first use:

- ``NYTO_NVRTC``: the path of ``libnvrtc.so*`` to open (first choice);
- the nvidia wheels next to torch, then torch's own ``lib`` folder, then
  ``CUDA_HOME``/``/usr/local/cuda``, then the loader's search path.

Compiled kernels (CUBIN) are cached in memory and on disk:
``NYTO_FUSE_CACHE_DIR`` (default ``~/.cache/nytorch/fuse``); ``NYTO_FUSE_CACHE=0``
disables the disk cache. The key hashes the source (which spells the program,
dtypes and vector width), the target architecture, the NVRTC version and the
options. Files are written atomically (temporary file + rename) and carry a
SHA-256 of their payload: a corrupted file is detected, removed and rebuilt.

Launching (CUDA tensors only) goes through the driver API (libcuda, also
opened with dlopen): ``cuModuleLoadData``, ``cuModuleGetFunction``,
``cuLaunchKernel`` on torch's current stream.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import sys
import tempfile
import threading
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["NvrtcError", "find_nvrtc", "nvrtc", "compile_cuda", "cache_dir", "Driver", "driver"]


class NvrtcError(RuntimeError):
    """NVRTC is missing or a compile failed (the message carries the log)."""


_lock = threading.Lock()


# ---------------------------------------------------------------------------
# Finding libnvrtc
def _candidates() -> List[str]:
    out: List[str] = []
    env = os.environ.get("NYTO_NVRTC")
    if env:
        out.append(env)
    roots = []
    for p in sys.path:
        if p and os.path.isdir(os.path.join(p, "nvidia")):
            roots.append(os.path.join(p, "nvidia"))
    try:  # the site-packages holding torch (without importing torch here)
        import importlib.util

        spec = importlib.util.find_spec("torch")
        if spec is not None and spec.origin:
            site = os.path.dirname(os.path.dirname(spec.origin))
            roots.insert(0, os.path.join(site, "nvidia"))
            out.extend(sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "lib", "libnvrtc*.so*"))))
    except (ImportError, ValueError):
        pass
    for r in roots:
        for sub in ("cu13", "cu12", "cuda_nvrtc"):
            out.extend(sorted(glob.glob(os.path.join(r, sub, "lib", "libnvrtc.so*")), reverse=True))
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            out.extend(sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")), reverse=True))
    out += ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    # builtins libraries and the ".alt" variant are not the API library
    return [c for c in out if "builtins" not in os.path.basename(c) and ".alt." not in os.path.basename(c)]


def find_nvrtc() -> Optional[str]:
    """The path (or soname) of the libnvrtc that :func:`nvrtc` opens, or None."""
    for c in _candidates():
        if os.path.sep in c and not os.path.exists(c):
            continue
        try:
            ctypes.CDLL(c, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return c
    return None


class _Nvrtc:
    def __init__(self, path: str) -> None:
        self.path = path
        # NVRTC opens libnvrtc-builtins by soname: load the one beside it first
        # (a library already loaded satisfies dlopen by soname).
        if os.path.sep in path:
            for b in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*"))):
                if ".alt." not in os.path.basename(b):
                    try:
                        ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
                    except OSError:
                        pass
        lib = self.lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        c_p, c_sz = ctypes.c_void_p, ctypes.c_size_t
        lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int)] * 2
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib.nvrtcCreateProgram.argtypes = [
            ctypes.POINTER(c_p),
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
        ]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(c_p)]
        lib.nvrtcCompileProgram.argtypes = [c_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        for name in ("nvrtcGetProgramLogSize", "nvrtcGetPTXSize", "nvrtcGetCUBINSize"):
            getattr(lib, name).argtypes = [c_p, ctypes.POINTER(c_sz)]
        for name in ("nvrtcGetProgramLog", "nvrtcGetPTX", "nvrtcGetCUBIN"):
            getattr(lib, name).argtypes = [c_p, ctypes.c_char_p]
        lib.nvrtcAddNameExpression.argtypes = [c_p, ctypes.c_char_p]
        lib.nvrtcGetLoweredName.argtypes = [c_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
        try:
            lib.nvrtcGetSupportedArchs.argtypes = [ctypes.POINTER(ctypes.c_int)]
            lib.nvrtcGetNumSupportedArchs.argtypes = [ctypes.POINTER(ctypes.c_int)]
            self._has_archs = True
        except AttributeError:
            self._has_archs = False
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise NvrtcError(f"nytorch: {what} failed: {self.lib.nvrtcGetErrorString(rc).decode()}")

    def supported_archs(self) -> List[int]:
        if not self._has_archs:
            return []
        n = ctypes.c_int()
        self._check(self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
        arr = (ctypes.c_int * n.value)()
        self._check(self.lib.nvrtcGetSupportedArchs(arr), "nvrtcGetSupportedArchs")
        return list(arr)

    def compile(
        self,
        source: str,
        name: str,
        options: Sequence[str],
        headers: Dict[str, str],
        cubin: bool = True,
        lowered: Sequence[str] = (),
    ) -> Tuple[bytes, str, Dict[str, str]]:
        """(CUBIN or PTX, log, {name expression: lowered name})."""
        prog = ctypes.c_void_p()
        hn = list(headers)
        hsrc = (ctypes.c_char_p * max(1, len(hn)))(*[headers[h].encode() for h in hn])
        hnames = (ctypes.c_char_p * max(1, len(hn)))(*[h.encode() for h in hn])
        self._check(
            self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), len(hn), hsrc, hnames),
            "nvrtcCreateProgram",
        )
        try:
            for e in lowered:
                self._check(self.lib.nvrtcAddNameExpression(prog, e.encode()), "nvrtcAddNameExpression")
            opts = (ctypes.c_char_p * max(1, len(options)))(*[o.encode() for o in options])
            rc = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(prog, buf)
            log = buf.value.decode(errors="replace")
            if rc != 0:
                raise NvrtcError(
                    f"nytorch: NVRTC could not compile {name} ({self.lib.nvrtcGetErrorString(rc).decode()}):\n{log}"
                )
            names = {}
            for e in lowered:
                p = ctypes.c_char_p()
                self._check(self.lib.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(p)), "nvrtcGetLoweredName")
                names[e] = (p.value or b"").decode()
            get_size, get = (
                (self.lib.nvrtcGetCUBINSize, self.lib.nvrtcGetCUBIN)
                if cubin
                else (self.lib.nvrtcGetPTXSize, self.lib.nvrtcGetPTX)
            )
            self._check(get_size(prog, ctypes.byref(size)), "nvrtcGet(CUBIN|PTX)Size")
            out = ctypes.create_string_buffer(size.value)
            self._check(get(prog, out), "nvrtcGet(CUBIN|PTX)")
            return out.raw, log, names
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


_nvrtc: Optional[_Nvrtc] = None
_nvrtc_error: Optional[str] = None


def nvrtc() -> _Nvrtc:
    """The opened NVRTC (raises :class:`NvrtcError` naming what was tried)."""
    global _nvrtc, _nvrtc_error
    with _lock:
        if _nvrtc is not None:
            return _nvrtc
        if _nvrtc_error is None:
            path = find_nvrtc()
            if path is None:
                _nvrtc_error = (
                    "nytorch: libnvrtc not found (set NYTO_NVRTC to its path, or install a CUDA "
                    "build of torch, whose nvidia wheels bring it)"
                )
            else:
                try:
                    _nvrtc = _Nvrtc(path)
                    return _nvrtc
                except (OSError, AttributeError, NvrtcError) as e:
                    _nvrtc_error = f"nytorch: cannot use {path}: {e}"
        raise NvrtcError(_nvrtc_error)


# ---------------------------------------------------------------------------
# The disk cache
_MAGIC = b"NYTOFUSE1\n"


def cache_dir() -> Optional[str]:
    """The disk cache folder, or None when ``NYTO_FUSE_CACHE=0``."""
    if os.environ.get("NYTO_FUSE_CACHE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    d = os.environ.get("NYTO_FUSE_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "nytorch", "fuse")
    return d


def _read_cached(path: str) -> Optional[bytes]:
    """The payload of a cache file, or None (missing; corrupted: removed)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    head = len(_MAGIC) + 32
    if len(data) >= head and data.startswith(_MAGIC):
        payload = data[head:]
        if hashlib.sha256(payload).digest() == data[len(_MAGIC) : head]:
            return payload
    stats["corrupt"] += 1
    try:
        os.remove(path)
    except OSError:
        pass
    return None


def _write_cached(path: str, payload: bytes) -> None:
    d = os.path.dirname(path)
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
    except OSError:
        pass  # a read-only or full cache folder only costs a recompile


# hits: memory / disk; compiles: NVRTC runs; corrupt: bad files found
stats = {"memory": 0, "disk": 0, "compiles": 0, "corrupt": 0}
_mem: Dict[str, Tuple[bytes, Dict[str, str]]] = {}


def compile_cuda(
    source: str, name: str, arch: int, headers: Dict[str, str], options: Sequence[str] = (), lowered: Sequence[str] = ()
) -> Tuple[bytes, Dict[str, str], str]:
    """CUBIN of ``source`` for ``sm_<arch>``, from the caches or NVRTC.

    Returns (cubin, {name expression: lowered name}, cache key)."""
    nv = nvrtc()
    opts = [f"--gpu-architecture=sm_{arch}", *options]
    h = hashlib.sha256()
    for part in (source, repr(sorted(headers.items())), repr(opts), repr(list(lowered)), repr(nv.version)):
        h.update(part.encode())
        h.update(b"\0")
    key = h.hexdigest()
    with _lock:
        hit = _mem.get(key)
    if hit is not None:
        stats["memory"] += 1
        return hit[0], hit[1], key
    d = cache_dir()
    path = os.path.join(d, f"{key}.cubin") if d else None
    if path:
        payload = _read_cached(path)
        if payload is not None:
            try:
                n_names, rest = payload.split(b"\n", 1)
                names = {}
                for _ in range(int(n_names)):
                    line, rest = rest.split(b"\n", 1)
                    e, low = line.decode().split("\t")
                    names[e] = low
                stats["disk"] += 1
                with _lock:
                    _mem[key] = (rest, names)
                return rest, names, key
            except ValueError:
                stats["corrupt"] += 1
    cubin, _, names = nv.compile(source, name, opts, headers, cubin=True, lowered=lowered)
    stats["compiles"] += 1
    if path:
        meta = f"{len(names)}\n" + "".join(f"{e}\t{low}\n" for e, low in names.items())
        _write_cached(path, meta.encode() + cubin)
    with _lock:
        _mem[key] = (cubin, names)
    return cubin, names, key


# ---------------------------------------------------------------------------
# The CUDA driver (launching; CUDA tensors only)
class Driver:
    """libcuda's module loading and kernel launch, opened with dlopen."""

    def __init__(self) -> None:
        try:
            lib = self.lib = ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise NvrtcError(f"nytorch: cannot open libcuda.so.1 ({e})") from None
        c_p = ctypes.c_void_p
        lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.cuModuleLoadData.argtypes = [ctypes.POINTER(c_p), ctypes.c_char_p]
        lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(c_p), c_p, ctypes.c_char_p]
        lib.cuLaunchKernel.argtypes = [
            c_p,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            c_p,
            ctypes.POINTER(c_p),
            ctypes.POINTER(c_p),
        ]
        lib.cuCtxGetCurrent.argtypes = [ctypes.POINTER(c_p)]
        lib.cuCtxSetCurrent.argtypes = [c_p]
        lib.cuInit.argtypes = [ctypes.c_uint]
        lib.cuDeviceGet.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(c_p), ctypes.c_int]
        lib.cuFuncSetAttribute.argtypes = [c_p, ctypes.c_int, ctypes.c_int]
        self.functions: Dict[Tuple[str, int, str], int] = {}

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            s = ctypes.c_char_p()
            self.lib.cuGetErrorString(rc, ctypes.byref(s))
            raise RuntimeError(f"nytorch: {what} failed: {s.value.decode() if s.value else rc}")

    def function(self, key: str, device: int, cubin: bytes, name: str) -> int:
        """The loaded kernel ``name`` of module ``key`` on ``device`` (the
        caller made torch's context of that device current)."""
        k = (key, device, name)
        f = self.functions.get(k)
        if f is None:
            ctx = ctypes.c_void_p()
            self._check(self.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
            if not ctx.value:  # a thread where torch made no runtime call yet: its primary context
                dev = ctypes.c_int()
                self._check(self.lib.cuInit(0), "cuInit")
                self._check(self.lib.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
                self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
                self._check(self.lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
            mod = ctypes.c_void_p()
            self._check(self.lib.cuModuleLoadData(ctypes.byref(mod), cubin), "cuModuleLoadData")
            fn = ctypes.c_void_p()
            self._check(self.lib.cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), "cuModuleGetFunction")
            f = self.functions[k] = int(fn.value or 0)
        return f

    def launch(self, fn: int, grid: int, block: int, stream: int, args: bytes) -> None:
        """Launch ``fn`` with one by-value argument holding ``args``."""
        buf = ctypes.create_string_buffer(args, len(args))
        params = (ctypes.c_void_p * 1)(ctypes.cast(buf, ctypes.c_void_p))
        self._check(
            self.lib.cuLaunchKernel(
                ctypes.c_void_p(fn), grid, 1, 1, block, 1, 1, 0, ctypes.c_void_p(stream), params, None
            ),
            "cuLaunchKernel",
        )


_driver: Optional[Driver] = None


def driver() -> Driver:
    global _driver
    with _lock:
        if _driver is None:
            _driver = Driver()
        return _driver
