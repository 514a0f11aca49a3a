"""The import guard: is this build of nytorch for the running torch?

``nytorch/__init__.py`` calls :func:`check` before it loads the compiled module
(``nytorch._C``), because a mismatched extension does not fail cleanly: it
loads into another torch's libraries with undefined symbols, or crashes.
The build facts come from ``nytorch/_build_info.py``, written by CMake at build
time (torch version, torch's CUDA version or ``None``, C++ ABI, CUDA targets, CPU
ISA builds). The check compares torch's major.minor version, torch's CUDA
version (CPU vs CUDA builds included) and the C++ ABI.

``NYTO_SKIP_TORCH_CHECK=1`` turns a mismatch into a warning (for experts who
know the ABI still matches); a missing compiled module is always an error.
Nothing here imports ``nytorch._C``.
"""

import os
import sys
import warnings
from typing import Any, Mapping, NoReturn, Optional

from ._build_facts import (  # noqa: F401  (re-exported: the guard's facts)
    BASE_VERSION,
    FACTS,
    SKIP_ENV,
    _minor,
    built_facts,
    describe_torch,
    extension_path,
    fix_commands,
    mismatch_message,
    mismatches,
    missing_message,
    running_facts,
    version,
)

_FIND: Any = object()  # "look up the real facts"


def check(
    built: Optional[Mapping[str, Any]] = _FIND,
    have: Optional[Mapping[str, Any]] = None,
    extension: Optional[str] = _FIND,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Raise ImportError unless this build of nytorch fits the running torch.

    The arguments default to the real facts (tests pass fake ones): ``built``
    the build facts (None: no ``_build_info.py``), ``have`` the running torch's,
    ``extension`` the path of the compiled module (None: missing).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if built is _FIND:
        built = built_facts()
    if extension is _FIND:
        extension = extension_path()
    if built is None:
        _fail(missing_message("build record (nytorch/_build_info.py, written by the build)", here))
    if extension is None:
        _fail(missing_message("compiled module (nytorch/_C*.so)", here))
    have = running_facts() if have is None else have
    problems = mismatches(built, have)
    if not problems:
        return
    msg = mismatch_message(built, have, problems)
    if environ.get(SKIP_ENV, "") not in ("", "0"):
        warnings.warn(f"{SKIP_ENV} is set; loading nytorch anyway. " + msg.split("\n")[0], RuntimeWarning, stacklevel=3)
        return
    _fail(msg)


def _invoked_as_info() -> bool:
    """``python -m nytorch.info``: report the mismatch instead of failing the import."""
    argv = getattr(sys, "orig_argv", [])
    return any(a == "-m" and b == __package__ + ".info" for a, b in zip(argv, argv[1:]))


def _fail(msg: str) -> NoReturn:
    if _invoked_as_info():
        from .info import report

        print(report(guard_error=msg))
        raise SystemExit(1)
    raise ImportError(msg)
