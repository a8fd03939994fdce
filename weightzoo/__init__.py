"""weightzoo: learned sample-weighting functions (MW-Net, CMW-Net) for robust training."""

from weightzoo.families import TaskFamilies, class_counts
from weightzoo.reduction import reduce_weighted
from weightzoo.weighters import CMWNet, MWNet, WeighterConfig, build_weighter

__all__ = [
    "CMWNet",
    "MWNet",
    "TaskFamilies",
    "WeighterConfig",
    "build_weighter",
    "class_counts",
    "reduce_weighted",
]
__version__ = "0.1.0"
