"""The machinery of ``nytorch.fuse`` (a private package).

- :mod:`nytorch._fuse.trace`: tracing a function of particles and numbers
  into an expression DAG (``Node``), the fuse opcodes read from
  ``_C.fuse_op_table()``, number-only evaluation;
- :mod:`nytorch._fuse.program`: compiling the DAG into the program bytes the
  C++ interpreters run;
- :mod:`nytorch._fuse.api`: the public functions (``fuse``, ``Fused``,
  ``program``, ``run_flat``, ``where``, ``clamp``, ...), re-exported by
  :mod:`nytorch`.

The public face is the decorator ``nytorch.fuse`` (with ``fuse.program``,
``fuse.run_flat``, ``fuse.Fused``, ... as attributes); inside the package,
import the names from ``nytorch._fuse.api`` (``nytorch.fuse`` is a function,
not a module).
"""
