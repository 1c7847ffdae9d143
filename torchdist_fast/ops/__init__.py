"""The ``torch.ops.torchdist_fast`` custom ops, one module per op family:

- ``random_draws``: ``draw_seed_offset`` (the only op that touches a generator), ``philox_randn``
- ``normal``: ``normal_rsample``, ``normal_sample``, ``normal_rsample_log_prob``, ``normal_log_prob``
  and their backward ops
- ``kl``: ``normal_kl``, ``normal_kl_backward``
- ``event_sums``: ``normal_log_prob_sum``, ``normal_entropy_sum``
- ``tanh_normal``: ``tanh_normal_rsample``, ``normal_rsample_log_prob_sum`` and their backward ops

Each holds its ops' checks, fake kernels and autograd, and the eager fast path that mirrors them.
Shared: ``checks`` (argument checks), ``launch`` (the one backend choice), ``eager_path`` (when the
dispatcher may be skipped), ``inductor`` (the ops under torch.compile). Importing this package
registers every op.
"""
from . import event_sums, kl, normal, random_draws, tanh_normal  # noqa: F401  (registers the ops)
from .inductor import EXPOSED_OPS, kernels_in_cpu_graphs, kernels_traceable  # noqa: F401  (README's documented path)
