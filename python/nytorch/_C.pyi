"""Types of ``nytorch._C``, the compiled extension (csrc/).

Every name the module defines is declared here; ``tests/test_typing.py``
checks that the two agree. Op codes are the ``int`` values of
``nytorch.ops``; tensors lists are sequences of ``torch.Tensor``.
"""

from typing import Any, Callable, Literal, Optional, Sequence, Tuple, Union, overload

import torch

Number = Union[int, float, bool]
Tensors = Sequence[torch.Tensor]

# -- tracked containers (csrc/containers.cpp) ---------------------------------

class VersionCell:
    """A module's structure version, shared by its tracked containers."""

    @property
    def version(self) -> int: ...

class ContainerDict(dict[Any, Any]):
    """A particle module's ``_buffers`` or ``_modules``: changes move its cell."""

    _nyto_cell: Optional[VersionCell]

class ParamDictBase(dict[str, Any]):
    """Base of a particle module's ``_parameters``: changes move its cell."""

    _nyto_cell: Optional[VersionCell]

def new_cell() -> VersionCell: ...
def bump(cell: Optional[VersionCell], /) -> None: ...

# -- lazy results (csrc/lazy_params.cpp) ---------------------------------------

class LazyRecord:
    """What a lazy result particle needs to make its Parameters (read-only)."""

    @property
    def done(self) -> bool: ...
    @property
    def flats(self) -> list[torch.Tensor]: ...
    @property
    def view_spec(self) -> Tuple[Tuple[int, int, Tuple[int, ...]], ...]: ...
    @property
    def param_slots(self) -> Tuple[Tuple[int, str, int], ...]: ...
    @property
    def requires_grad(self) -> bytes: ...
    @property
    def lazy_params(self) -> Optional[Tuple[Any, ...]]: ...
    @property
    def state(self) -> Any: ...

def materialize(record: LazyRecord, /) -> None: ...
def register_lazy_types(lazy_params: type, param_dict: type, /) -> None: ...
def lazy_result(self: Any, state: Any, flats: list[torch.Tensor], /) -> Any: ...

# -- the op library (csrc/ops.cpp, csrc/python_module.cpp) ---------------------

@overload
def apply(
    op: int, inplace: Literal[False], lists: Sequence[Tensors], scalars: Sequence[Number], pool: Any = ..., /
) -> list[torch.Tensor]: ...
@overload
def apply(
    op: int, inplace: Literal[True], lists: Sequence[Tensors], scalars: Sequence[Number], pool: Any = ..., /
) -> None: ...
@overload
def apply(op: int, inplace: bool, lists: Sequence[Tensors], scalars: Sequence[Number], pool: Any = ..., /) -> Any: ...
def apply_eager(
    op: int, inplace: bool, lists: Sequence[Tensors], scalars: Sequence[Number], pool: Any = ..., /
) -> Any: ...
def pooled_like(tensors: Tensors, pool: Any, /) -> list[torch.Tensor]: ...
def make_params(
    flats: Tensors, spec: Sequence[Tuple[int, int, Tuple[int, ...]]], like: Union[Sequence[Any], bytes], /
) -> Tuple[list[torch.nn.Parameter], bytes]: ...
def view_keys(tensors: Tensors, /) -> bytes: ...
def views_ok(params: Tensors, keys: bytes, /) -> bool: ...
def share_versions(tensors: Tensors, flat: torch.Tensor, /) -> None: ...
def set_parameter_class(cls: type, /) -> None: ...
def build_modules(
    olds: Tuple[Any, ...],
    containers: Tuple[str, ...],
    children: Sequence[Tuple[int, str, int]],
    param_slots: Sequence[Tuple[int, str, int]],
    params: Any,
    buffer_slots: Sequence[Tuple[int, str, int]],
    buffers: Tensors,
    record: Optional[LazyRecord] = ...,
    key_templates: Optional[list[Any]] = ...,
    /,
) -> list[Any]: ...

# -- the particle hot path (csrc/particle_fastpath.cpp) ------------------------

def fast_op(self: Any, other: Any, list_op: Optional[int], scalar_op: int, inplace: bool, /) -> Any: ...
def fast_unary(self: Any, op: int, /) -> Any: ...
def fast_random(self: Any, dist: int, a: float, b: float, /) -> Any: ...
def op_method(
    name: str, list_op: Optional[int], scalar_op: int, inplace: bool, general: Callable[[Any, Any], Any], doc: str, /
) -> Any: ...
def register_particle_types(nyto_module: type, state: type, containers: Tuple[str, ...], /) -> None: ...
def module_versions(root: Any, modules: Tuple[Any, ...], /) -> bytes: ...
def state_ok(root: Any, state: Any, /) -> bool: ...

# -- nytorch.fuse (csrc/fuse/) -------------------------------------------------

def fuse_run(
    program: bytes,
    numbers: Sequence[Number],
    inputs: Sequence[Tensors],
    outs: Optional[Sequence[Tensors]],
    seed: Union[int, torch.Tensor],
    offset: int,
    n_rows: int = ...,
    rows: Union[None, Sequence[int], torch.Tensor] = ...,
    /,
) -> Optional[list[list[torch.Tensor]]]: ...
def fuse_call(programs: Any, args: Sequence[Any], out: Any, /) -> Any: ...
def fuse_op_table() -> Tuple[Tuple[str, int, int, bool], ...]: ...
def fuse_scalar(code: int, /, *numbers: float) -> float: ...
def fuse_row_sums(
    rows: torch.Tensor,
    w: Sequence[float],
    v: Optional[Sequence[float]],
    acc1: torch.Tensor,
    acc2: Optional[torch.Tensor],
    /,
) -> None: ...

# -- the op table (csrc/ops.def) ------------------------------------------------

def op_table() -> Tuple[Tuple[str, int, int, int, int, str, str], ...]: ...

# -- build facts ---------------------------------------------------------------

def torch_version() -> str: ...
def cpu_isa() -> str: ...
def cpu_avx512() -> bool: ...
def has_cuda() -> bool: ...
