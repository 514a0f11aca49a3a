"""nytorch's error family: every error nytorch raises on purpose is a
:class:`NytoError`, and also the built-in type a PyTorch user would catch.

>>> import nytorch as nyto
>>> issubclass(nyto.SpeciesError, AssertionError), issubclass(nyto.StructureError, ValueError)
(True, True)
"""

from __future__ import annotations

__all__ = ["NytoError", "SpeciesError", "StructureError", "FuseError", "CollectiveError", "StateDictError"]


class NytoError(Exception):
    """Base of the errors nytorch raises on purpose."""


class SpeciesError(NytoError, AssertionError):
    """Particles of different species met (the spec promises an ``AssertionError``),
    or ranks hold particles of different species or structure."""


class StructureError(NytoError, ValueError):
    """Two particles of one species no longer have the same structure (a parameter
    was deleted, set to None, replaced by one of another shape, dtype or device),
    or a particle's structure can't be used (a parameter viewed through a
    parametrization that an op would have to write). The message names the parameter."""


class FuseError(NytoError, TypeError):
    """An operation a fused function can't express (raised while tracing), or
    arguments that don't fit the traced program."""


class CollectiveError(NytoError, RuntimeError):
    """A collective failed on this rank: a peer died, hung past the timeout or
    the connection broke. The process group is unusable afterwards; end the
    job (torchrun then stops the other ranks)."""


class StateDictError(NytoError, KeyError, ValueError):
    """A ``load_state_dict`` state with missing or unexpected keys; the message
    names them. A KeyError (what indexing the state raised before) and a
    ValueError (a bad value for the argument); nothing was loaded."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
