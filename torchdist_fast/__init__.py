"""torchdist_fast: fused Philox / Normal kernels behind a drop-in torch.distributions.Normal."""
from . import ops  # noqa: F401  (registers torch.ops.torchdist_fast.*)
from . import rng, streams  # noqa: F401  (per-rank seeds: torchdist_fast.rng.rank_seed, also as torchdist_fast.streams)
from .settings import (
    cpu_kernel,
    cpu_log_prob,
    cpu_sampling,
    get_cpu_kernel,
    get_cpu_log_prob,
    get_cpu_sampling,
    get_gpu_kernel,
    gpu_kernel,
    set_cpu_kernel,
    set_cpu_log_prob,
    set_cpu_sampling,
    set_gpu_kernel,
)
from .distribution import Normal
from . import kl  # noqa: F401,E402  (registers kl_divergence for torchdist_fast.Normal)
from .independent import IndependentNormal
from .tanh_normal import TanhNormal
from .functional import checkpoint_context, randn
from .patching import patch

__version__ = "0.1.0"

__all__ = [
    "Normal",
    "IndependentNormal",
    "TanhNormal",
    "patch",
    "randn",
    "checkpoint_context",
    "cpu_kernel",
    "cpu_sampling",
    "get_cpu_kernel",
    "get_cpu_sampling",
    "set_cpu_kernel",
    "set_cpu_sampling",
    "cpu_log_prob",
    "get_cpu_log_prob",
    "set_cpu_log_prob",
    "gpu_kernel",
    "get_gpu_kernel",
    "set_gpu_kernel",
]
