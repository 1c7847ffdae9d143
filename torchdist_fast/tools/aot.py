"""Ahead-of-time compile check: every Triton kernel of the package for real GPU targets, no GPU.

``python -m torchdist_fast.tools.aot`` compiles every kernel of the kernel inventory
(``triton_kernels/inventory.py``) in every variant its launchers pick (dtype, constexprs, num_warps)
for sm_80 and sm_90 with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))``; the
1-D elementwise kernels in two specializations: the generic broadcast layout and the contiguous one
Triton picks at run time (inner sizes s1..s3 and the strides of dim 0 equal to 1 become constants,
numel % 16 == 0); the others in the generic one. Its last line counts kernels, variants and compiles. It prints registers, spill
bytes (``ptxas -v``) and the vector width of global loads/stores from the PTX, and exits 1 on any compile error. The
interpreter accepts code that the compiler rejects; this is what catches it.

Run it without TRITON_INTERPRET (kernels must be JITFunctions, not interpreted ones).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

TARGETS = (80, 90)
DTYPES = {"float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16"}
SEED_ARGS = ("seed_lo", "seed_hi", "offset_lo", "offset_hi", "position_in_memory")


def kernel_specs():
    """(name, kernel, [(dtype, constexprs, num_warps)] per variant) for every Triton kernel of the package: the
    kernel inventory (``triton_kernels/inventory.py``), the variants the launchers pick, at their BLOCK sizes."""
    from ..triton_kernels import inventory

    specs: dict = {}
    for m, k in inventory.kernels():
        specs[(m, k)] = (inventory.short_name(k), getattr(inventory.module(m), k), [])
    for v in inventory.variants():
        specs[(v.module, v.kernel)][2].append((v.dtype, dict(v.constexprs), v.num_warps))
    return list(specs.values())


def _signature(kernel, dtype: str, constexprs: dict, contiguous: bool):
    """Triton signature for one dtype; in the contiguous variant sizes and inner strides are 1."""
    sig, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            # words and the stream position are int64 tensors; everything else carries the op's float dtype
            sig[name] = "*i64" if name in ("words_ptr", "seed_offset_ptr") else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif name in SEED_ARGS:
            sig[name] = "i32"
        elif contiguous and (re.fullmatch(r"s[123]", name) or name.endswith("_t0")):
            consts[name] = 1
            sig[name] = "constexpr"
        elif contiguous and name in ("numel", "n_counters"):
            sig[name] = "i64"
            attrs[(i,)] = [["tt.divisibility", 16]]  # the run-time specialization of sizes % 16 == 0
        else:
            sig[name] = "i64"
    return sig, consts, attrs


_PTX_PATTERNS = {
    "ld.v4": r"ld\.global(?:\.\w+)*\.v4",
    "ld.v2": r"ld\.global(?:\.\w+)*\.v2",
    "st.v4": r"st\.global(?:\.\w+)*\.v4",
    "st.v2": r"st\.global(?:\.\w+)*\.v2",
    "st.scalar": r"st\.global(?!(?:\.\w+)*\.v[24])(?:\.\w+)*\.[bfus](?:8|16|32|64)\s",
}


def _ptx_stats(ptx: str) -> str:
    """Global memory instructions by vector width: vector loads/stores are what bandwidth needs."""
    return " ".join(f"{k}={len(re.findall(p, ptx))}" for k, p in _PTX_PATTERNS.items())


def ptxas_path(cap: int) -> str:
    """The ptxas Triton itself uses for ``cap``, across Triton versions.

    Triton >= 3.5: ``get_ptxas(arch)`` (sm_90+ may use a newer ptxas than sm_80); 3.4:
    ``get_ptxas()`` with no argument; 3.2-3.3: ``_path_to_binary("ptxas")`` -> (path, version).
    ``TRITON_PTXAS_PATH`` wins in every version, as it does in Triton."""
    from triton.backends.nvidia import compiler as nvidia

    env = os.environ.get("TRITON_PTXAS_PATH")
    if env:
        return env
    get = getattr(nvidia, "get_ptxas", None)
    if get is not None:
        try:
            tool = get(cap)
        except TypeError:  # Triton 3.4: get_ptxas() takes no argument
            tool = get()
        return tool.path if hasattr(tool, "path") else tool[0] if isinstance(tool, tuple) else str(tool)
    if hasattr(nvidia, "_path_to_binary"):
        return nvidia._path_to_binary("ptxas")[0]
    raise RuntimeError(f"cannot find the ptxas of Triton {_triton_version()}")


def _triton_version() -> str:
    import triton

    return triton.__version__


def _ptxas_usage(ptx: str, cap: int) -> str:
    """Registers and spill bytes from ``ptxas -v``, run with the ptxas Triton itself uses for ``cap``."""
    ptxas = ptxas_path(cap)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        arch = f"sm_{cap}a" if cap >= 90 else f"sm_{cap}"
        res = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", path, "-o", os.devnull], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{ptxas} -v failed: {res.stderr.strip()[-500:]}")
    regs = re.search(r"Used (\d+) registers", res.stderr)
    spills = re.search(r"(\d+) bytes spill stores", res.stderr)
    if not (regs and spills):
        raise RuntimeError(f"no register/spill report from {ptxas} -v: {res.stderr.strip()[-500:]}")
    return f"regs={regs.group(1)} spills={spills.group(1)}B"


def compile_all(targets=TARGETS, dtypes=tuple(DTYPES.values()), verbose=True) -> tuple[list[str], dict]:
    """Compile every kernel variant; returns the failures (empty when all compile) and the counts
    {kernels, variants (kernel x dtype x constexprs), compiles}."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("the AOT check needs compiled kernels: run it without TRITON_INTERPRET=1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = []
    specs = kernel_specs()
    kernels = variants = compiles = 0
    for name, kernel, kernel_variants in specs:
        kernels += 1
        # the 1-D elementwise kernels also in the contiguous specialization Triton picks at run time
        # (the 2-D tile, event-sum and TanhNormal kernels: the generic form)
        layouts = (False, True) if {"numel", "n_counters"} & set(kernel.arg_names) else (False,)
        for dtype, constexprs, num_warps in kernel_variants:
            if dtype not in dtypes:
                continue
            variants += 1
            for contiguous in layouts:
                sig, consts, attrs = _signature(kernel, dtype, constexprs, contiguous)
                for cap in targets:
                    label = f"{name} {dtype} sm_{cap} {'contig' if contiguous else 'strided'} " + \
                        " ".join(f"{k}={v}" for k, v in constexprs.items())
                    t0 = time.perf_counter()
                    compiles += 1
                    try:
                        src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
                        compiled = triton.compile(src, target=GPUTarget("cuda", cap, 32), options={"num_warps": num_warps})
                    except Exception as exc:  # report every failure, not just the first
                        failures.append(f"{label}: {type(exc).__name__}: {exc}")
                        if verbose:
                            print(f"FAIL {label}: {exc}", flush=True)
                        continue
                    try:
                        usage = _ptxas_usage(compiled.asm["ptx"], cap)
                    except Exception as exc:  # the register/spill check is part of the check
                        failures.append(f"{label}: ptxas: {exc}")
                        if verbose:
                            print(f"FAIL {label}: ptxas: {exc}", flush=True)
                        continue
                    if verbose:
                        print(f"ok   {label:60s} warps={compiled.metadata.num_warps} {usage} "
                              f"{_ptx_stats(compiled.asm['ptx'])} ({time.perf_counter() - t0:.2f}s)", flush=True)
    return failures, {"kernels": kernels, "variants": variants, "compiles": compiles}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchdist_fast.tools.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, nargs="+", default=list(TARGETS), help="compute capabilities (default 80 90)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    failures, counts = compile_all(tuple(args.targets), tuple(DTYPES[d] for d in args.dtypes), verbose=not args.quiet)
    if failures:
        print(f"{len(failures)} of {counts['compiles']} compiles failed ({counts['kernels']} kernels, "
              f"{counts['variants']} variants)", file=sys.stderr)
        return 1
    print(f"all kernels compiled: {counts['kernels']} kernels, {counts['variants']} variants, {counts['compiles']} compiles "
          f"(triton {_triton_version()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
