"""The import guard (nytorch/_guard.py) and ``python -m nytorch.info``.

Mismatches are simulated with fake build facts (no second torch is installed):
the guard's function directly, and a copy of the installed package whose
build record or compiled module was changed, imported in a subprocess.
"""

import os
import shutil
import subprocess
import sys

import nytorch
import pytest
import torch
from nytorch import _guard

HAVE = _guard.running_facts()
CPU_213 = {
    "LOCAL_VERSION": "torch2.13cpu",
    "TORCH_VERSION": "2.13.0+cpu",
    "TORCH_CUDA": None,
    "CXX11_ABI": True,
    "WITH_CUDA": False,
    "CUDA_ARCHS": [],
    "CPU_ISAS": ["DEFAULT", "AVX2"],
}
CUDA_214 = {
    "LOCAL_VERSION": "torch2.14cu130",
    "TORCH_VERSION": "2.14.1+cu130",
    "TORCH_CUDA": "13.0",
    "CXX11_ABI": True,
    "WITH_CUDA": True,
    "CUDA_ARCHS": ["sm_80", "sm_90", "compute_90"],
    "CPU_ISAS": ["DEFAULT", "AVX2"],
}
TORCH_CPU = {"TORCH_VERSION": "2.13.0+cpu", "TORCH_CUDA": None, "CXX11_ABI": True}
TORCH_CUDA = {"TORCH_VERSION": "2.14.1+cu130", "TORCH_CUDA": "13.0", "CXX11_ABI": True}


def guard_error(built, have, extension="/x/_C.so", **env):
    with pytest.raises(ImportError) as e:
        _guard.check(built=built, have=have, extension=extension, environ=env)
    return str(e.value)


def test_this_build_fits_this_torch():
    built = _guard.built_facts()
    assert built is not None and built["TORCH_VERSION"] == torch.__version__
    assert _guard.extension_path() == nytorch._C.__file__
    assert _guard.mismatches(built, HAVE) == []
    _guard.check()  # the real facts: no error
    assert _guard.BASE_VERSION == nytorch.__version__


def test_matching_facts_pass():
    _guard.check(built=CPU_213, have=TORCH_CPU, extension="/x/_C.so", environ={})
    _guard.check(built=CUDA_214, have=TORCH_CUDA, extension="/x/_C.so", environ={})
    # the wheels require torch==<major>.<minor>.*: another patch release is accepted
    _guard.check(built=CPU_213, have=dict(TORCH_CPU, TORCH_VERSION="2.13.2+cpu"), extension="/x/_C.so", environ={})


def test_wrong_torch_version():
    msg = guard_error(CPU_213, dict(TORCH_CPU, TORCH_VERSION="2.14.1+cpu"))
    assert msg.startswith(
        "nytorch 2.0.0.dev0+torch2.13cpu was built for PyTorch 2.13.0+cpu without CUDA "
        "(CPU build) (you have PyTorch 2.14.1+cpu without CUDA (CPU build)): torch 2.13.x != 2.14.x."
    )
    # the exact commands to get a matching build, and the escape hatch
    assert "pip install 'torch==2.13.*' --index-url https://download.pytorch.org/whl/cpu" in msg
    assert "pip install --no-build-isolation --no-deps --force-reinstall ." in msg
    assert 'tools/build-wheel.sh --python "$(command -v python)" cpu' in msg
    assert "NYTO_SKIP_TORCH_CHECK=1" in msg


def test_cuda_build_under_cpu_torch():
    msg = guard_error(CUDA_214, dict(TORCH_CPU, TORCH_VERSION="2.14.1+cpu"))
    assert msg.startswith(
        "nytorch 2.0.0.dev0+torch2.14cu130 was built for PyTorch 2.14.1+cu130 with CUDA 13.0, "
        "CUDA kernels for sm_80, sm_90, compute_90 (you have PyTorch 2.14.1+cpu without CUDA"
    )
    assert "a CUDA build (CUDA 13.0) under a CPU-only torch" in msg
    assert "pip install 'torch==2.14.*' --index-url https://download.pytorch.org/whl/cu130" in msg


def test_cpu_build_under_cuda_torch():
    msg = guard_error(CPU_213, dict(TORCH_CUDA, TORCH_VERSION="2.13.0+cu130"))
    assert "(you have PyTorch 2.13.0+cu130 with CUDA 13.0)" in msg
    assert "a CPU-only build under a CUDA torch (CUDA 13.0): nytorch has no CUDA kernels" in msg
    assert "--index-url https://download.pytorch.org/whl/cpu" in msg
    assert 'tools/build-wheel.sh --python "$(command -v python)" cuda' in msg


def test_other_cuda_version_and_abi():
    msg = guard_error(CUDA_214, dict(TORCH_CUDA, TORCH_VERSION="2.14.1+cu128", TORCH_CUDA="12.8"))
    assert "CUDA 13.0 != CUDA 12.8" in msg
    msg = guard_error(CPU_213, dict(TORCH_CPU, CXX11_ABI=False))
    assert "C++ ABI _GLIBCXX_USE_CXX11_ABI=1 != 0" in msg


def test_escape_hatch():
    have = dict(TORCH_CPU, TORCH_VERSION="2.14.1+cpu")
    with pytest.warns(
        RuntimeWarning,
        match="NYTO_SKIP_TORCH_CHECK is set; loading nytorch anyway. nytorch "
        "2.0.0.dev0\\+torch2.13cpu was built for PyTorch 2.13.0",
    ):
        _guard.check(built=CPU_213, have=have, extension="/x/_C.so", environ={"NYTO_SKIP_TORCH_CHECK": "1"})
    guard_error(CPU_213, have, NYTO_SKIP_TORCH_CHECK="0")  # "0" does not skip


def test_missing_compiled_module():
    msg = guard_error(CPU_213, TORCH_CPU, extension=None)
    assert msg.startswith("nytorch's compiled module (nytorch/_C*.so) is missing (")
    assert "pip install --no-build-isolation ." in msg
    # the escape hatch cannot help a module that is not there
    with pytest.raises(ImportError, match="compiled module"):
        _guard.check(built=CPU_213, have=TORCH_CPU, extension=None, environ={"NYTO_SKIP_TORCH_CHECK": "1"})
    msg = guard_error(None, TORCH_CPU)
    assert msg.startswith("nytorch's build record (nytorch/_build_info.py, written by the build) is missing")


def test_gpu_coverage():
    from nytorch.info import _gpu_covered

    archs = CUDA_214["CUDA_ARCHS"]
    assert _gpu_covered(archs, 8, 0).startswith("yes (machine code)")
    assert _gpu_covered(archs, 8, 6).startswith("yes (machine code)")  # sm_80 cubin runs on sm_86
    assert _gpu_covered(archs, 9, 0).startswith("yes (machine code)")
    assert _gpu_covered(archs, 10, 0).startswith("yes (PTX")  # Blackwell: compute_90 PTX
    assert _gpu_covered(archs, 7, 5).startswith("NO")
    assert _gpu_covered(["sm_80"], 9, 0).startswith("NO")


def run(args, **kw):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("NYTO_SKIP_TORCH_CHECK", None)
    env.update(kw.pop("env", {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, **kw)


def test_info_names_the_build():
    r = run(["-m", "nytorch.info"])
    assert r.returncode == 0, r.stderr
    built = _guard.built_facts()
    out = r.stdout
    assert f"nytorch          {_guard.version(built)} (" in out
    assert f"built for        {_guard.describe_torch(built['TORCH_VERSION'], built['TORCH_CUDA'])}" in out
    assert ("wheel +" + built["LOCAL_VERSION"]) in out if built["LOCAL_VERSION"] else "source build" in out
    assert f"torch            {torch.__version__} (" in out
    assert "build check      OK: the build fits this torch" in out
    philox = " + AVX-512 Philox" if nytorch._C.cpu_avx512() else ""
    assert f"CPU kernels      {nytorch._C.cpu_isa()}{philox} (" in out
    for key in ("threads", "GPU", "NVRTC", "build CPU ISAs", "compiled module"):
        assert f"\n{key} " in out


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    """A copy of the nytorch package as imported now (python files, build record,
    compiled module), importable with ``python -S`` and PYTHONPATH=<copy>:<torch's site-packages>."""
    root = tmp_path_factory.mktemp("pkg")
    pkg = root / "nytorch"
    src = os.path.dirname(nytorch.__file__)
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__", "_C*.so", "_build_info.py"))
    shutil.copy(nytorch._C.__file__, pkg)
    shutil.copy(nytorch._build_info.__file__, pkg / "_build_info.py")
    site = os.path.dirname(os.path.dirname(torch.__file__))
    return pkg, {"PYTHONPATH": os.pathsep.join([str(root), site])}


def test_guard_runs_before_the_compiled_module(package_copy):
    pkg, env = package_copy
    info = (pkg / "_build_info.py").read_text()
    # a build record for another torch: ImportError, and _C was never loaded;
    # then (same process) no compiled module: the guard says so
    (pkg / "_build_info.py").write_text(info + '\nTORCH_VERSION = "2.99.0"\nLOCAL_VERSION = "torch2.99cpu"\n')
    code = f"""
import importlib, pathlib, sys
try:
    import nytorch
except ImportError as e:
    print(e)
print('loaded' if 'nytorch._C' in sys.modules else 'not loaded')
pkg = pathlib.Path({str(pkg)!r})
(pkg / '_build_info.py').write_text({info!r})
for so in pkg.glob('_C*.so'):
    so.rename(pkg.parent / so.name)
for name in [m for m in sys.modules if m.startswith('nytorch')]:
    del sys.modules[name]
importlib.invalidate_caches()
try:
    import nytorch
except ImportError as e:
    print(e)
for so in pkg.parent.glob('_C*.so'):
    so.rename(pkg / so.name)
"""
    r = run(["-S", "-c", code], env=env)
    assert r.returncode == 0, r.stderr
    first, rest = r.stdout.split("\nnot loaded\n")
    assert first.startswith("nytorch 2.0.0.dev0+torch2.99cpu was built for PyTorch 2.99.0")
    assert f"(you have PyTorch {torch.__version__}" in first
    assert rest.startswith(f"nytorch's compiled module (nytorch/_C*.so) is missing ({pkg})")
    assert list(pkg.glob("_C*.so")) and (pkg / "_build_info.py").read_text() == info
    (pkg / "_build_info.py").write_text(info + '\nTORCH_VERSION = "2.99.0"\nLOCAL_VERSION = "torch2.99cpu"\n')
    try:
        # python -m nytorch.info still reports, with the guard's message, and exits 1
        r = run(["-S", "-m", "nytorch.info"], env=env)
        assert r.returncode == 1, r.stderr
        assert "build check      FAILED: nytorch 2.0.0.dev0+torch2.99cpu was built for PyTorch 2.99.0" in r.stdout
        assert "pip install 'torch==2.99.*'" in r.stdout
        # the escape hatch: a warning, then the import goes on (from the copy)
        r = run(
            ["-S", "-c", "import nytorch; print(nytorch.__file__)"],
            env=dict(env, NYTO_SKIP_TORCH_CHECK="1", PYTHONWARNINGS="default"),
        )
        assert r.returncode == 0 and r.stdout.strip() == str(pkg / "__init__.py"), r.stderr
        assert "NYTO_SKIP_TORCH_CHECK is set; loading nytorch anyway" in r.stderr
    finally:
        (pkg / "_build_info.py").write_text(info)
