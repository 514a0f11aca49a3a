"""nytorch: a whole ``torch.nn.Module`` behaves like one number."""
import torch as _torch

from ._build_info import TORCH_VERSION as _BUILT_TORCH

if _torch.__version__ != _BUILT_TORCH:
    raise ImportError(
        f"nytorch was compiled against torch {_BUILT_TORCH} but torch {_torch.__version__} "
        "is installed; rebuild nytorch against this torch "
        "(pip install --no-build-isolation --force-reinstall .)"
    )

from . import _C  # noqa: E402  (registers the torch.ops.nytorch ops)
from . import ops  # noqa: E402
from .errors import CollectiveError, NytoError, SpeciesError, StructureError  # noqa: E402
from .particle import NytoModule, Species  # noqa: E402
from .fuse import (FuseError, abs, clamp, exp, fma, fuse, lerp, log, maximum, minimum,  # noqa: E402,A004
                   rand_like, randn_like, run_flat, sign, sqrt, where)
from .swarm import Swarm  # noqa: E402
from . import algorithms  # noqa: E402

__version__ = "2.0.0.dev0"
__all__ = ["NytoModule", "Species", "ops", "fuse", "FuseError", "run_flat", "rand_like", "randn_like",
           "where", "clamp", "minimum", "maximum", "lerp", "fma", "sqrt", "exp", "log", "sign", "abs"]
__all__ += ["Swarm", "algorithms", "NytoError", "SpeciesError", "StructureError", "CollectiveError"]
