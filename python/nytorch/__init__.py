"""nytorch: a whole ``torch.nn.Module`` behaves like one number."""

import torch as _torch

# The import guard, before the compiled module loads: this build's facts
# (_build_info.py) against the running torch (nytorch/_guard.py).
from ._guard import check as _check_build

_check_build()

from . import (
    _C,  # noqa: E402  (registers the torch.ops.nytorch ops)
    algorithms,  # noqa: E402
    ops,  # noqa: E402
)
from ._fuse import api as _fuse_api  # noqa: E402
from ._fuse.api import (  # noqa: E402,A004
    FuseError,
    abs,
    clamp,
    exp,
    fma,
    fuse,
    hypot,
    lerp,
    log,
    maximum,
    minimum,
    rand_like,
    randn_like,
    run_flat,
    run_rows,
    sign,
    sqrt,
    where,
)
from ._version import __version__  # noqa: E402
from .errors import CollectiveError, NytoError, SpeciesError, StateDictError, StructureError  # noqa: E402
from .particle import NytoModule, Species  # noqa: E402
from .storage import FlatStorage, flat_storage, structure_signature  # noqa: E402
from .swarm import Swarm  # noqa: E402

__all__ = [
    "NytoModule",
    "Species",
    "ops",
]
# nytorch.fuse's public functions, as its module lists them (the classes stay there)
__all__ += [n for n in _fuse_api.__all__ if n not in ("Fused", "Program", "program")]
__all__ += ["Swarm", "algorithms", "NytoError", "SpeciesError", "StructureError", "CollectiveError", "StateDictError"]
__all__ += ["flat_storage", "FlatStorage", "structure_signature"]
