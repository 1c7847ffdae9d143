"""Build the optional hand-written CUDA backend: kernels/*.cu -> torchdist_fast._cuda_backend.

    python setup_cuda.py build_ext --inplace
    TORCH_CUDA_ARCH_LIST="8.0;9.0" python setup_cuda.py build_ext --inplace   # pick the targets

Needs a CUDA build of torch and nvcc (a CUDA toolkit whose major version matches
torch.version.cuda): CUDA_HOME, else the toolkit of the nvcc on PATH, even where that nvcc is a
wrapper script (``find_cuda_home``). The extension registers torch.ops.torchdist_fast_cuda.* for CUDA tensors;
torchdist_fast/cuda_backend.py holds the Python launchers and ``available()``.

This is not part of ``pip install -e .`` (pyproject.toml builds the pure-Python package; the
Triton kernels serve CUDA tensors without this backend). Without a GPU or a CUDA build of torch,
``python kernels/check_compile.py`` still compiles every kernel for sm_80 / sm_90 and
tests/test_cuda_backend.py checks the device code on the host.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
EXTENSION = "torchdist_fast._cuda_backend"


def _is_toolkit(home: str) -> bool:
    """``home`` holds a CUDA toolkit: bin/nvcc and the runtime headers."""
    headers = [os.path.join(home, "include", "cuda_runtime.h"),
               *glob.glob(os.path.join(home, "targets", "*", "include", "cuda_runtime.h"))]
    return os.path.isfile(os.path.join(home, "bin", "nvcc")) and any(os.path.isfile(h) for h in headers)


def _nvcc_top(nvcc: str) -> str | None:
    """The toolkit root as ``nvcc`` itself reports it (``nvcc --dryrun`` prints ``TOP=<root>``), which
    also sees through a wrapper script or an alias that execs the real nvcc elsewhere."""
    try:
        res = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ TOP=(.+?)\s*$", res.stdout + res.stderr, re.M)
    return os.path.normpath(m.group(1)) if m else None


def find_cuda_home() -> str | None:
    """The CUDA toolkit to build with: ``CUDA_HOME`` (or ``CUDA_PATH``) when set; else the toolkit
    of the ``nvcc`` on PATH, found through symlinks and through a wrapper script (such as
    ``exec /usr/local/cuda-13.0/bin/nvcc "$@"`` in /usr/local/bin, where torch's own guess, the
    folder above nvcc's, is /usr/local); else /usr/local/cuda. None when there is none."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if _is_toolkit(home):
            return home
        top = _nvcc_top(nvcc)
        if top and _is_toolkit(top):
            return top
    return "/usr/local/cuda" if _is_toolkit("/usr/local/cuda") else None


def _why_not(home: str | None) -> list[str]:
    """Reasons the extension cannot be built here (empty when it can), ``home`` the CUDA toolkit
    ``find_cuda_home`` found (or None)."""
    try:
        import torch
    except ImportError as e:
        return [f"torch is not importable ({e})"]
    reasons = []
    if getattr(torch.version, "hip", None):
        reasons.append(f"the installed torch {torch.__version__} is a ROCm build; this backend is CUDA only")
    elif torch.version.cuda is None:
        reasons.append(
            f"the installed torch {torch.__version__} is a CPU-only build (torch.version.cuda is None), and a CUDA "
            "extension must be compiled and linked against a CUDA build of torch (libtorch_cuda, libc10_cuda)"
        )
    if not (home and os.path.exists(os.path.join(home, "bin", "nvcc"))):
        reasons.append("nvcc (the CUDA compiler) was not found: it is not on PATH and CUDA_HOME does not hold bin/nvcc")
    return reasons


def main() -> None:
    home = find_cuda_home()
    if home:  # before torch.utils.cpp_extension is imported: it reads CUDA_HOME once, at import
        os.environ["CUDA_HOME"] = home
    reasons = _why_not(home)
    if reasons:
        print(
            "setup_cuda.py: cannot build the optional CUDA backend (" + EXTENSION + ") here: "
            + "; ".join(reasons) + ". To build it, install a CUDA build of torch (for example "
            "`pip install torch --index-url https://download.pytorch.org/whl/cu128`) and a CUDA toolkit whose nvcc "
            "major version matches torch.version.cuda, then rerun `python setup_cuda.py build_ext --inplace`. "
            "Nothing else depends on it: torchdist_fast works without this backend (its Triton kernels serve CUDA "
            "tensors), and `python kernels/check_compile.py` compiles the CUDA sources for sm_80/sm_90 without a GPU "
            "or a CUDA build of torch.",
            file=sys.stderr,
        )
        sys.exit(1)

    from setuptools import setup
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    os.chdir(ROOT)  # setuptools wants source paths relative to the setup script
    sources = sorted(glob.glob(os.path.join("kernels", "*.cu")))
    # name/version come from pyproject.toml; only the extension is added here
    setup(
        ext_modules=[
            CUDAExtension(
                EXTENSION,
                sources=sources,
                include_dirs=[os.path.join(ROOT, "kernels")],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
            )
        ],
        cmdclass={"build_ext": BuildExtension},
    )


if __name__ == "__main__":
    main()
