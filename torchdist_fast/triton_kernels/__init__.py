"""Triton kernels, one file per op, each launcher beside its kernels.

The package re-exports the five launchers the ops call; ``cuda_backend`` has the same five with
the same signatures. Imported lazily by ``torchdist_fast.ops`` so the package imports without triton.
"""
from .normal_log_prob import normal_log_prob_bwd, normal_log_prob_fwd
from .normal_rsample import normal_rsample_bwd, normal_rsample_fwd
from .philox import philox_randn

__all__ = ["philox_randn", "normal_rsample_fwd", "normal_rsample_bwd", "normal_log_prob_fwd", "normal_log_prob_bwd"]
