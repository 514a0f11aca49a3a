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
from .particle import NytoModule, Species  # noqa: E402
from .swarm import Swarm  # noqa: E402
from . import algorithms  # noqa: E402

__version__ = "2.0.0.dev0"
__all__ = ["NytoModule", "Species", "ops"]
__all__ += ["Swarm", "algorithms"]
