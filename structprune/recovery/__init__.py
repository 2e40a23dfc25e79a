"""Stage 4 — recovery: win back accuracy after surgery.

- :mod:`.reconstruct`: retraining-free, layer-wise least squares on calibration data (math in
  ``solve.py``, the calibration passes in ``run.py``).
- :mod:`.distill`: the one Accelerate training loop (distillation from the unpruned teacher, or plain
  fine-tuning), its losses, layer maps and gradual pruning.
"""
