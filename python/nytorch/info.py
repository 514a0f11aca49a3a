"""``python -m nytorch.info``: the environment report to paste into a bug report.

nytorch's version and build facts, torch and its CUDA, the CPU kernel build
chosen at load time, OpenMP threads, the GPU (name, arch, whether this build has
kernels for it), whether NVRTC is found, and whether the build fits the running
torch. It runs even when the import guard refuses the build: it then prints the
report with the guard's message and exits 1.
"""

import ctypes
import glob
import os
import platform
import sys
from typing import Any, Dict, List, Optional, Tuple

from . import _build_facts as build_facts


def _gpu_covered(archs: List[str], major: int, minor: int) -> str:
    """Whether CUDA targets like ['sm_80', 'sm_90', 'compute_90'] run on sm_<major><minor>."""
    sm = [a for a in archs if a.startswith("sm_")]
    ptx = [a for a in archs if a.startswith("compute_")]
    here = major * 10 + minor

    def num(a: str) -> int:
        return int("".join(c for c in a.split("_")[1] if c.isdigit()))

    # A cubin runs on its own major at an equal or higher minor; PTX is compiled
    # by the driver for any equal or newer arch.
    if any(num(a) // 10 == major and num(a) <= here for a in sm):
        return "yes (machine code)"
    if any(num(a) <= here for a in ptx):
        return "yes (PTX, compiled by the driver at first use)"
    return "NO: this build has no kernels for it"


def _nvrtc(cuda: Optional[str]) -> str:
    names = []
    if cuda:
        names.append(f"libnvrtc.so.{cuda.split('.')[0]}")
    names.append("libnvrtc.so")
    for name in names:
        try:
            ctypes.CDLL(name)
            return f"found ({name})"
        except OSError:
            pass
    for base in sys.path:
        hits = sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", "libnvrtc.so*")))
        if hits:
            return f"found ({hits[0]})"
    return "not found"


def _rows(guard_error: Optional[str]) -> List[Tuple[str, Any]]:
    rows: List[Tuple[str, Any]] = []
    built = build_facts.built_facts()
    rows.append(
        (
            "nytorch",
            f"{build_facts.version(built) if built else build_facts.BASE_VERSION} "
            f"({os.path.dirname(os.path.abspath(__file__))})",
        )
    )
    if built is None:
        rows.append(("build", "no build record (nytorch/_build_info.py): not built"))
    else:
        cuda = built.get("TORCH_CUDA")
        rows.append(("built for", build_facts.describe_torch(built["TORCH_VERSION"], cuda)))
        rows.append(
            (
                "build",
                f"{'wheel +' + built['LOCAL_VERSION'] if built.get('LOCAL_VERSION') else 'source build'}, "
                "CUDA kernels "
                f"{'for ' + ', '.join(built.get('CUDA_ARCHS') or []) if built.get('WITH_CUDA') else 'none'}"
                f"{', nvcc ' + built['NVCC_VERSION'] if built.get('NVCC_VERSION') else ''}",
            )
        )
        rows.append(("build CPU ISAs", ", ".join(built.get("CPU_ISAS") or [])))
        rows.append(
            ("build C++", f"{built.get('COMPILER')}, _GLIBCXX_USE_CXX11_ABI={int(bool(built.get('CXX11_ABI')))}")
        )
    rows.append(("compiled module", build_facts.extension_path() or "MISSING"))
    rows.append(("python", f"{platform.python_version()} ({sys.executable}), {platform.platform()}"))

    import torch

    rows.append(
        (
            "torch",
            f"{torch.__version__} ({os.path.dirname(torch.__file__)}), "
            f"_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        )
    )
    rows.append(("torch CUDA", torch.version.cuda or "none (CPU build)"))
    if guard_error is None and built is not None:
        problems = build_facts.mismatches(built, build_facts.running_facts())
        if problems:
            skipped = os.environ.get(build_facts.SKIP_ENV, "") not in ("", "0")
            guard_error = ("; ".join(problems)) + (f" ({build_facts.SKIP_ENV} set: loaded anyway)" if skipped else "")
    rows.append(
        (
            "build check",
            "OK: the build fits this torch" if guard_error is None else "FAILED: " + guard_error.split("\n")[0],
        )
    )

    c: Any = None
    if guard_error is None:
        try:
            from . import _C as c
        except Exception as e:  # noqa: BLE001  (a report shows what failed)
            rows.append(("compiled module", f"failed to load: {type(e).__name__}: {e}"))
    rows.append(
        (
            "CPU kernels",
            f"{c.cpu_isa()}{' + AVX-512 Philox' if c.cpu_avx512() else ''} "
            f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}, "
            f"torch's CPU capability {torch.backends.cpu.get_cpu_capability()})"
            if c is not None
            else "unknown (compiled module not loaded)",
        )
    )
    rows.append(
        (
            "threads",
            f"torch {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
            f"{os.cpu_count()} CPUs, OpenMP {'yes' if torch.backends.openmp.is_available() else 'no'}",
        )
    )
    if c is not None:
        rows.append(("CUDA kernels", "compiled in" if c.has_cuda() else "not compiled in"))
    if torch.version.cuda is None:
        rows.append(("GPU", "none (CPU build of torch)"))
    elif not torch.cuda.is_available():
        rows.append(("GPU", "none visible (torch.cuda.is_available() is False)"))
    else:
        archs = (built or {}).get("CUDA_ARCHS") or []
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            cover = (
                _gpu_covered(archs, major, minor) if (built or {}).get("WITH_CUDA") else "no CUDA kernels in this build"
            )
            rows.append((f"GPU {i}", f"{torch.cuda.get_device_name(i)}, sm_{major}{minor}; nytorch kernels: {cover}"))
    rows.append(("NVRTC", _nvrtc(torch.version.cuda)))
    return rows


def report(guard_error: Optional[str] = None) -> str:
    """The report as text (``guard_error``: the import guard's message, when it refused the build)."""
    rows = _rows(guard_error)
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    if guard_error is not None:
        text += "\n\n" + guard_error
    return text


def facts() -> Dict[str, Any]:
    """The build facts as a dict (None values where not recorded)."""
    return dict(build_facts.built_facts() or {})


if __name__ == "__main__":
    print(report())
