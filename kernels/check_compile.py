"""Compile every kernels/*.cu with nvcc for real GPU targets (no GPU needed) and report ptxas stats.

Usage:  python kernels/check_compile.py [--arch 80 90] [--fail-on-spills] [--keep DIR]

Each .cu file is compiled to an object file (``nvcc -c``) per target, with the flags
``torch.utils.cpp_extension.CUDAExtension`` passes (torch include paths, the half-conversion
macros, ``--expt-relaxed-constexpr``, the C++ standard torch uses, TORCH_EXTENSION_NAME, the C++
ABI of the installed torch), plus warnings as errors: ``-Xcompiler -Wall,-Wextra,-Werror`` and
``--Werror all-warnings`` (torch and Python headers are included with -isystem, so only warnings
in our code count). This works with a CPU build of torch: its wheel ships the ATen/c10 CUDA
headers; the one generated header a CPU build lacks (c10/cuda/impl/cuda_cmake_macros.h, which only
defines a Windows export macro) is skipped with -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE.

Per kernel it prints one line:
    ok sm_90 normal_rsample_fwd_kernel<float, 1> regs=27 stack=32B spill_st=0B spill_ld=0B st=10 stvec=2 st128=2 ld128=2
(registers, stack frame, spill bytes from ``-Xptxas -v``; from the PTX: global store instructions,
vector ones among them, 128-bit ones, and 128-bit global loads; static counts, the scalar ones
being the tail of the last counter and unaligned fallbacks). A stack frame without spills in the Philox kernels is the
never-taken large-argument path of sincos. The last line is ``all kernels compiled (...)``.
Exit status: 0 when every file compiled (and, with --fail-on-spills, nothing spilled), 1 on a
compile failure or spill, 2 when nvcc or torch is missing.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parent
EXTENSION_NAME = "_cuda_backend"


def find_nvcc() -> str | None:
    for cand in (os.environ.get("NVCC"),
                 os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None,
                 shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def torch_cxx_std(cpp_extension) -> str:
    # the standard CUDAExtension compiles with (c++20 from torch 2.10 on, c++17 before)
    import inspect

    try:
        src = inspect.getsource(cpp_extension)
    except (OSError, TypeError):
        return "c++20"
    return "c++20" if "-std=c++20" in src else "c++17"


def nvcc_flags(arch: str) -> list[str]:
    import torch
    from torch.utils import cpp_extension

    flags = list(cpp_extension.COMMON_NVCC_FLAGS)
    flags += [f"-std={torch_cxx_std(cpp_extension)}", "-O3", "-Xcompiler", "-fPIC"]
    includes = list(cpp_extension.include_paths()) + [sysconfig.get_paths()["include"]]
    for inc in includes:
        flags += ["-isystem", inc]
    if not any(os.path.isfile(os.path.join(inc, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for inc in includes):
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")  # CPU build of torch: header not generated
    flags += [
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-DTORCH_EXTENSION_NAME={EXTENSION_NAME}",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-Xcompiler", "-Wall,-Wextra,-Werror",
        "--Werror", "all-warnings",
        "-Xptxas", "-v",
        "-gencode", f"arch=compute_{arch},code=sm_{arch}",
    ]
    return flags


def demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short_name(demangled: str) -> str:
    # "void tdf::normal_rsample_fwd_kernel<float, 1>(tdf::RsampleFwdArgs<float>)" -> "normal_rsample_fwd_kernel<float, 1>"
    name = demangled.split("(", 1)[0]
    name = name.removeprefix("void ").removeprefix("tdf::")
    return name.replace("c10::", "")


def parse_ptxas(text: str) -> dict[str, dict]:
    stats: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            cur = stats.setdefault(m.group(1), {})
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur is not None:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and cur is not None:
            cur["regs"] = int(m.group(1))
            cur = None
    return stats


def parse_ptx(text: str) -> dict[str, dict]:
    out = {}
    for chunk in re.split(r"\n(?=\.visible \.entry |\.entry )", text)[1:]:
        m = re.match(r"(?:\.visible )?\.entry (\S+?)\(", chunk)
        if not m:
            continue
        stores = re.findall(r"\bst\.global((?:\.\w+)*)", chunk)
        loads = re.findall(r"\bld\.global((?:\.\w+)*)", chunk)

        def wide(mods: str) -> bool:  # 128-bit access: v4 of 32-bit or v2 of 64-bit
            return (".v4" in mods and re.search(r"\.[buf]32\b", mods) is not None) or (".v2" in mods and re.search(r"\.[buf]64\b", mods) is not None)

        out[m.group(1)] = {
            "st": len(stores), "stvec": sum(1 for mods in stores if ".v2" in mods or ".v4" in mods),
            "st128": sum(map(wide, stores)), "ld128": sum(map(wide, loads)),
        }
    return out


def compile_one(nvcc: str, src: Path, arch: str, workdir: Path) -> dict:
    keep = workdir / f"{src.stem}_sm{arch}"
    keep.mkdir(parents=True, exist_ok=True)
    obj = keep / f"{src.stem}.o"
    cmd = [nvcc, "-c", str(src), "-o", str(obj), "-keep", "-keep-dir", str(keep)] + nvcc_flags(arch)
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    result = {"src": src.name, "arch": arch, "rc": res.returncode, "seconds": time.time() - t0,
              "log": res.stdout + res.stderr, "cmd": cmd, "kernels": {}}
    if res.returncode == 0:
        ptxas = parse_ptxas(result["log"])
        ptx = {}
        for f in keep.glob("*.ptx"):
            ptx.update(parse_ptx(f.read_text()))
        # entry points only (ptxas also reports called functions, e.g. the sincos slow path)
        result["kernels"] = {name: {**st, **ptx[name]} for name, st in ptxas.items() if name in ptx}
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=["80", "90"], help="compute capabilities (default: 80 90)")
    ap.add_argument("--files", nargs="*", help="only these .cu files (default: kernels/*.cu)")
    ap.add_argument("--fail-on-spills", action="store_true", help="exit 1 if any kernel spills registers")
    ap.add_argument("--keep", help="keep objects, PTX and intermediates in this directory")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel nvcc processes")
    ap.add_argument("--verbose", action="store_true", help="print the nvcc command lines")
    args = ap.parse_args(argv)

    nvcc = find_nvcc()
    if nvcc is None:
        print("check_compile: nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH)", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension  # noqa: F401
    except ImportError as e:
        print(f"check_compile: torch is needed for its include paths: {e}", file=sys.stderr)
        return 2
    sources = [Path(f).resolve() for f in args.files] if args.files else sorted(KERNELS_DIR.glob("*.cu"))
    if not sources:
        print("check_compile: no .cu files", file=sys.stderr)
        return 1
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"nvcc: {nvcc} ({version}); torch {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU build'})")

    tmp = None
    workdir = Path(args.keep) if args.keep else Path(tmp := tempfile.mkdtemp(prefix="tdf_check_compile_"))
    try:
        jobs = [(src, arch) for src in sources for arch in args.arch]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda job: compile_one(nvcc, job[0], job[1], workdir), jobs))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    failed = spilled = 0
    n_kernels = 0
    for r in results:
        if args.verbose:
            print(" ".join(r["cmd"]))
        if r["rc"] != 0:
            failed += 1
            print(f"FAILED {r['src']} sm_{r['arch']} (nvcc exit {r['rc']}, {r['seconds']:.0f}s):")
            print(r["log"][-6000:])
            continue
        print(f"compiled {r['src']} for sm_{r['arch']} in {r['seconds']:.0f}s")
        names = demangle(list(r["kernels"]))
        for mangled, st in sorted(r["kernels"].items(), key=lambda kv: short_name(names[kv[0]])):
            n_kernels += 1
            spill = st.get("spill_st", 0) + st.get("spill_ld", 0)
            spilled += spill > 0
            print(f"ok sm_{r['arch']} {short_name(names[mangled])} regs={st.get('regs', '?')} stack={st.get('stack', 0)}B "
                  f"spill_st={st.get('spill_st', 0)}B spill_ld={st.get('spill_ld', 0)}B "
                  f"st={st.get('st', '?')} stvec={st.get('stvec', '?')} st128={st.get('st128', '?')} ld128={st.get('ld128', '?')}")
    per_arch = collections.Counter(r["arch"] for r in results if r["rc"] == 0)
    if failed:
        print(f"{failed} of {len(results)} compilations FAILED")
        return 1
    if spilled and args.fail_on_spills:
        print(f"{spilled} kernels spill registers")
        return 1
    print(f"all kernels compiled ({n_kernels} kernels, {len(sources)} files, targets "
          f"{', '.join('sm_' + a for a in sorted(per_arch))}; {spilled} with spills)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
