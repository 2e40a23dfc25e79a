"""Layer-wise least-squares reconstruction: retraining-free recovery after pruning.

``solve.py`` holds the math (Gram statistics, ridge solves); ``run.py`` the calibration passes that
collect the statistics layer by layer and apply the fits.
"""

from .run import FITS, BlockFit, ReconstructConfig, ReconstructReport, reconstruct, take_examples
from .solve import BlockStats, block_error, ridge, solve_scales, solve_weights

__all__ = [
    "FITS",
    "BlockFit",
    "BlockStats",
    "ReconstructConfig",
    "ReconstructReport",
    "block_error",
    "reconstruct",
    "ridge",
    "solve_scales",
    "solve_weights",
    "take_examples",
]
