"""This build's facts and the running torch's (what the import guard,
``nytorch._guard``, compares and ``python -m nytorch.info`` reports).

Nothing here imports ``nytorch._C`` or another nytorch module but ``_version``.
"""

import importlib.util
from typing import Any, Dict, List, Mapping, Optional

from ._version import __version__ as BASE_VERSION  # the one version string (nytorch/_version.py)

SKIP_ENV = "NYTO_SKIP_TORCH_CHECK"
FACTS = (
    "LOCAL_VERSION",
    "TORCH_VERSION",
    "TORCH_CUDA",
    "CXX11_ABI",
    "WITH_CUDA",
    "CUDA_ARCHS",
    "NVCC_VERSION",
    "CPU_ISAS",
    "COMPILER",
)


def built_facts() -> Optional[Dict[str, Any]]:
    """The build facts of ``nytorch/_build_info.py``, or None without one."""
    try:
        from . import _build_info as b  # type: ignore[attr-defined]  # written by the build
    except ImportError:
        return None
    facts = {k: getattr(b, k, None) for k in FACTS}
    facts["WITH_CUDA"] = bool(facts["WITH_CUDA"])
    return facts


def running_facts() -> Dict[str, Any]:
    """The same facts for the torch imported now."""
    import torch

    return {
        "TORCH_VERSION": torch.__version__,
        "TORCH_CUDA": torch.version.cuda,
        "CXX11_ABI": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
    }


def extension_path() -> Optional[str]:
    """Where ``nytorch._C`` would load from (found, not loaded), or None."""
    try:
        spec = importlib.util.find_spec(__package__ + "._C")
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def version(built: Mapping[str, Any]) -> str:
    """nytorch's version with the build's local tag (``2.0.0.dev0+torch2.13cpu``)."""
    local = built.get("LOCAL_VERSION") or ""
    return BASE_VERSION + ("+" + local if local else "")


def _minor(v: str) -> str:
    return ".".join(v.split("+")[0].split(".")[:2])


def describe_torch(torch_version: str, cuda: Optional[str]) -> str:
    return f"PyTorch {torch_version} " + (f"with CUDA {cuda}" if cuda else "without CUDA (CPU build)")


def mismatches(built: Mapping[str, Any], have: Mapping[str, Any]) -> List[str]:
    """What differs between a build and the running torch; empty when they match."""
    out = []
    if _minor(built["TORCH_VERSION"]) != _minor(have["TORCH_VERSION"]):
        out.append(f"torch {_minor(built['TORCH_VERSION'])}.x != {_minor(have['TORCH_VERSION'])}.x")
    bc, hc = built.get("TORCH_CUDA"), have.get("TORCH_CUDA")
    if bc and not hc:
        out.append(f"a {'CUDA' if built.get('WITH_CUDA') else 'CUDA-torch'} build (CUDA {bc}) under a CPU-only torch")
    elif hc and not bc:
        out.append(f"a CPU-only build under a CUDA torch (CUDA {hc}): nytorch has no CUDA kernels")
    elif bc and hc and _minor(bc) != _minor(hc):
        out.append(f"CUDA {bc} != CUDA {hc}")
    if built.get("CXX11_ABI") is not None and bool(built["CXX11_ABI"]) != bool(have["CXX11_ABI"]):
        out.append(f"C++ ABI _GLIBCXX_USE_CXX11_ABI={int(bool(built['CXX11_ABI']))} != {int(bool(have['CXX11_ABI']))}")
    return out


def fix_commands(built: Mapping[str, Any], have: Mapping[str, Any]) -> str:
    """The two ways out: the torch this build is for, or a build for the running torch."""
    cuda = built.get("TORCH_CUDA")
    index = "cu" + cuda.replace(".", "") if cuda else "cpu"
    want = _minor(built["TORCH_VERSION"])
    kind = "cuda" if have.get("TORCH_CUDA") else "cpu"
    return (
        f"To fix it, either install the PyTorch this nytorch was built for:\n"
        f"    pip install 'torch=={want}.*' --index-url https://download.pytorch.org/whl/{index}\n"
        f"or build nytorch for your PyTorch {have['TORCH_VERSION']}, from a nytorch source checkout:\n"
        f"    pip install --no-build-isolation --no-deps --force-reinstall .\n"
        f'(or a wheel: tools/build-wheel.sh --python "$(command -v python)" {kind}; see README.md).\n'
        f"{SKIP_ENV}=1 turns this error into a warning, for experts who know the ABI still matches "
        f"(a mismatched extension can crash the interpreter)."
    )


def mismatch_message(built: Mapping[str, Any], have: Mapping[str, Any], problems: List[str]) -> str:
    cuda_kernels = (
        "" if not built.get("WITH_CUDA") else f", CUDA kernels for {', '.join(built.get('CUDA_ARCHS') or [])}"
    )
    return (
        f"nytorch {version(built)} was built for "
        f"{describe_torch(built['TORCH_VERSION'], built.get('TORCH_CUDA'))}{cuda_kernels} "
        f"(you have {describe_torch(have['TORCH_VERSION'], have.get('TORCH_CUDA'))}): "
        f"{'; '.join(problems)}.\n" + fix_commands(built, have)
    )


def missing_message(what: str, where: str) -> str:
    return (
        f"nytorch's {what} is missing ({where}): this is a source tree that was never built, or a "
        f"broken install. Build and install it (from the nytorch source checkout, with your torch "
        f"installed): pip install --no-build-isolation .  -- or install a nytorch wheel built for "
        f"your torch (README.md, 'Install a wheel'). Do not run Python from inside python/ of a checkout."
    )
