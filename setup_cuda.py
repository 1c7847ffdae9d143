"""Build the optional hand-written CUDA backend: kernels/*.cu -> torchdist_fast._cuda_backend.

    python setup_cuda.py build_ext --inplace
    TORCH_CUDA_ARCH_LIST="8.0;9.0" python setup_cuda.py build_ext --inplace   # pick the targets

Needs a CUDA build of torch and nvcc (a CUDA toolkit whose major version matches
torch.version.cuda). The extension registers torch.ops.torchdist_fast_cuda.* for CUDA tensors;
torchdist_fast/cuda_backend.py holds the Python launchers and ``available()``.

This is not part of ``pip install -e .`` (pyproject.toml builds the pure-Python package; the
Triton kernels serve CUDA tensors without this backend). Without a GPU or a CUDA build of torch,
``python kernels/check_compile.py`` still compiles every kernel for sm_80 / sm_90 and
tests/test_cuda_backend.py checks the device code on the host.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
EXTENSION = "torchdist_fast._cuda_backend"


def _why_not() -> list[str]:
    """Reasons the extension cannot be built here (empty when it can)."""
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
    from torch.utils import cpp_extension

    # torch sets cpp_extension.CUDA_HOME only in CUDA builds; look for nvcc ourselves otherwise
    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not (nvcc and os.path.exists(nvcc)):
        reasons.append("nvcc (the CUDA compiler) was not found: it is not on PATH and CUDA_HOME does not hold bin/nvcc")
    return reasons


def main() -> None:
    reasons = _why_not()
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
