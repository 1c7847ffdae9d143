"""What the example CLIs share: argument types, device and output-folder checks, the progress
bar, the memory measurements, tables and plots. Bad input ends in ``parser.error`` (exit status
2, one ``error:`` line), never in a traceback."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch

import torchdist_fast

IMPLS = ("torch", "torchdist_fast")
IMPL_CHOICES = ("torch", "torchdist_fast", "both")


def normal_class(impl: str):
    """The class an example builds its Normals with; the only thing ``--impl`` changes."""
    if impl == "torch":
        return torch.distributions.normal.Normal
    if impl == "torchdist_fast":
        return torchdist_fast.Normal
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def selected_impls(choice: str) -> tuple[str, ...]:
    return IMPLS if choice == "both" else (choice,)


# ---------------------------------------------------------------------------------- arguments
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**63), got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def device_arg(text: str) -> torch.device:
    """``cpu`` or ``cuda[:N]``, checked against this machine (other device types are refused:
    torchdist_fast's kernels are CPU and CUDA only)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (use cpu or cuda[:N])") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise argparse.ArgumentTypeError(f"device type {device.type!r} is not supported here (use cpu or cuda[:N])")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def add_common_args(parser: argparse.ArgumentParser, *, impl: bool = True, out_default: str = "out") -> None:
    if impl:
        parser.add_argument("--impl", choices=IMPL_CHOICES, default="both",
                            help="which Normal: torch.distributions, torchdist_fast, or both in turn (default)")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu or cuda[:N] (default: cuda when available, else cpu)")
    parser.add_argument("--seed", type=seed_int, default=0, help="one seed for data, initialization and noise")
    parser.add_argument("--cpu-sampling", choices=("torch", "philox"), default=None,
                        help="how torchdist_fast.Normal draws on CPU tensors: 'torch' (numbers identical to "
                             "torch.distributions) or 'philox' (the stream of the GPU kernels); default: the "
                             "library's setting (TORCHDIST_FAST_CPU_SAMPLING, else 'torch')")
    parser.add_argument("--out", default=out_default, help=f"folder for the PNG and JSON, created if missing (default ./{out_default})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def prepare_out(parser: argparse.ArgumentParser, text: str) -> Path:
    """The output folder, created (with its parents) if missing; a file in the way, or a folder
    that cannot be created or written, is a usage error, found before any training starts."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        parser.error(f"--out {text!r} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent is a file, permissions, read-only file system
        parser.error(f"--out {text!r}: cannot create the folder ({e.strerror or e})")
    if not os.access(path, os.W_OK | os.X_OK):
        parser.error(f"--out {text!r}: the folder is not writable")
    return path


# ---------------------------------------------------------------------------------- progress
class Progress:
    """tqdm when importable (it is in the ``bench`` extra), else a plain counter on stderr.

    ``write`` prints a line without breaking the bar.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0
        self._bar = None
        self._last_plain = 0.0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, postfix: str = "") -> None:
        self.n += 1
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(1)
            return
        now = time.monotonic()  # the plain counter: at most a few lines a second
        if now - self._last_plain > 0.5 or self.n == self.total:
            self._last_plain = now
            print(f"{self.desc} [{self.n}/{self.total}] {postfix}", file=sys.stderr, flush=True)

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def sampling_mode(mode: str | None):
    """``torchdist_fast.cpu_sampling(mode)`` for the run, or the library's setting when None."""
    if mode is None:
        yield
    else:
        with torchdist_fast.cpu_sampling(mode):
            yield


# ---------------------------------------------------------------------------------- memory
class SavedTensorBytes:
    """Bytes autograd saves for backward inside the scope, beyond the storages of ``exclude``
    (inputs and parameters, which exist anyway). Each storage is counted once, however many
    times it is saved: this is memory held until backward, not a count of references.

    The same measurement as ``torchdist_fast.tools.bench.saved_bytes_per_element`` (which counts per
    saved reference), for a whole training step; what a CPU run reports in place of a peak.
    """

    def __init__(self, exclude=()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._exclude:
            self._seen[ptr] = storage.nbytes()
        return t

    @property
    def nbytes(self) -> int:
        return sum(self._seen.values())

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


# ---------------------------------------------------------------------------------- reporting
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from torchdist_fast.tools.bench import cpu_name

    return cpu_name()


def describe_run(device: torch.device, sampling: str | None) -> str:
    mode = sampling or torchdist_fast.get_cpu_sampling()
    where = f"{device} ({device_name(device)}, {torch.get_num_threads()} threads)" if device.type == "cpu" else f"{device} ({device_name(device)})"
    extra = f" | torchdist_fast CPU sampling: {mode}" if device.type == "cpu" else ""
    return f"torch {torch.__version__} | torchdist_fast {torchdist_fast.__version__} | {where}{extra}"


def run_label(device: torch.device, sampling: str | None) -> str:
    """The device for a plot title, with torchdist_fast's CPU sampling mode where it applies."""
    if device.type != "cpu":
        return str(device)
    return f"cpu, torchdist_fast sampling: {sampling or torchdist_fast.get_cpu_sampling()}"


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def format_table(headers, rows) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_curves(path: Path, curves: dict, *, xlabel: str, ylabel: str, title: str) -> bool:
    """Line plot of ``{label: (xs, ys)}`` into ``path`` (matplotlib, Agg backend). False when
    matplotlib is missing (it is in the ``bench`` extra): the run still prints everything."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"torch": dict(color="tab:blue"), "torchdist_fast": dict(color="tab:orange", linestyle="--")}
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=label, linewidth=1.6, **styles.get(label, {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out: Path, png_name: str, json_name: str, curves: dict, *, xlabel: str, ylabel: str,
                 title: str, record: dict, device: torch.device, sampling: str | None) -> None:
    """The PNG of the curves and the JSON of ``record`` plus device and versions, into ``out``."""
    import json

    png = out / png_name
    if plot_curves(png, curves, xlabel=xlabel, ylabel=ylabel, title=title):
        print(f"wrote {png}")
    else:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    path = out / json_name
    with open(path, "w") as f:
        json.dump({**record, "device": str(device), "device_name": device_name(device),
                   "cpu_sampling": sampling, "torch": torch.__version__}, f, indent=1)
    print(f"wrote {path}")
