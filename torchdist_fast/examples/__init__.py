"""Examples people run: ``python -m torchdist_fast.examples.vae``, ``.reinforce``, ``.distributed``."""
