"""The tooling around the runtime: what measures, checks and compiles it, never imported by it.

Each module is a command (``python -m torchdist_fast.tools.<name>``):

- ``bench``: the comparison runner behind ``python -m torchdist_fast`` and ``benchmarks/``
  (torch.distributions eager vs torch.compile vs torchdist_fast, one run, ratios), timing calls
  with ``timing.time_calls`` (CUDA events on a GPU), as ``device_copy`` does;
- ``headline``: the README's results table, from a committed results file;
- ``host_overhead``: host time per call of the sampling path, kernels aside;
- ``step_rate``: training steps per second of two small policy updates;
- ``cost_model``: every kernel variant compiled for sm_90 and counted (the static model), with
  its CI thresholds in ``cost_model_thresholds.json``;
- ``aot``: every kernel of the inventory compiled for sm_80 / sm_90, no GPU needed;
- ``gpu_check``: the plans for a short GPU window (the first-contact plan first), run by
  ``gpu_plan`` with the workloads of ``gpu_workloads``, the pytest plugin ``gpu_check_pytest``,
  the copy-bandwidth kernel ``device_copy``, and the time estimates of ``gpu_estimate`` (its
  inputs in ``gpu_check_data.json`` and ``gpu_check_silicon_cases.txt``).

The runtime (everything outside ``tools`` and ``examples``) imports nothing from here:
``tests/test_structure.py`` checks it.
"""
