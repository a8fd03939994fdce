"""weightzoo: learned sample-weighting functions (MW-Net, CMW-Net) for robust training.

The public API: weighters and their artifact, task families, the ``WeightedLoss`` wrapper,
the training engine and strategies, and the end-to-end ``train_recipe``/``apply_weighter``.
"""

from weightzoo.artifact import WeighterFileError, load_weighter, save_weighter, validate_artifact
from weightzoo.bias import BiasSpec, inject_bias
from weightzoo.data import DataSplits, list_datasets, load_dataset
from weightzoo.engine import Schedule, Strategy, Trainer, TrainingSet
from weightzoo.families import TaskFamilies, class_counts
from weightzoo.hub import WeighterNotFoundError, load_pretrained_weighter, push_to_hub, resolve
from weightzoo.loss import WeightedLoss
from weightzoo.losses import LOSS_NAMES, per_sample_loss
from weightzoo.meta import LookaheadConfig, meta_step
from weightzoo.models import build_model, list_models
from weightzoo.pipeline import apply_weighter, prepare_data, train_recipe, train_with_baselines
from weightzoo.recipe import Recipe, load_recipe
from weightzoo.reduction import reduce_weighted
from weightzoo.strategies import FrozenWeighting, MetaConfig, MetaWeighting, PlainLoss
from weightzoo.weighters import CMWNet, MWNet, WeighterConfig, build_weighter

__all__ = [
    "LOSS_NAMES", "BiasSpec", "CMWNet", "DataSplits", "FrozenWeighting", "LookaheadConfig",
    "MWNet", "MetaConfig", "MetaWeighting", "PlainLoss", "Recipe", "Schedule", "Strategy",
    "TaskFamilies", "Trainer", "TrainingSet", "WeightedLoss", "WeighterConfig",
    "WeighterFileError", "WeighterNotFoundError", "apply_weighter", "build_model",
    "build_weighter", "class_counts", "inject_bias", "list_datasets", "list_models",
    "load_dataset", "load_pretrained_weighter", "load_recipe", "load_weighter", "meta_step",
    "per_sample_loss", "prepare_data", "push_to_hub", "reduce_weighted", "resolve",
    "save_weighter", "train_recipe", "train_with_baselines", "validate_artifact",
]
__version__ = "0.1.0"
