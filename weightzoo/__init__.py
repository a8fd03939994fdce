"""weightzoo: learned sample-weighting functions (MW-Net, CMW-Net) for robust training.

The public API: weighters and their artifact, task families, the one weighting path
(``SampleWeighting``) and its user-facing wrapper ``WeightedLoss``, the method registry and
step contract, the training engine, the bilevel machinery, and the end-to-end
``train_recipe`` / ``apply_weighter``.  Layout: ``data/`` (sources, bias), ``weighting/``,
``bilevel/`` (look-ahead, estimators, meta sets), ``methods/``, ``training/`` (engine,
views, checkpoints, multi-source training), ``artifact/`` (format, card, curve, hub, zoo).
"""

import weightzoo.methods  # noqa: F401 - registers the built-in methods
from weightzoo.artifact.format import (
    Provenance,
    WeighterFileError,
    load_artifact,
    save_artifact,
    validate_artifact,
)
from weightzoo.artifact.hub import WeighterNotFoundError, load_pretrained, push_to_hub, resolve
from weightzoo.artifact.recommend import Recommendation, recommend
from weightzoo.bilevel.estimators import (
    BilevelProblem,
    MetaGradient,
    MetaGradientEstimator,
    build_estimator,
    estimator_names,
    register_estimator,
)
from weightzoo.bilevel.famus import Famus, FamusConfig
from weightzoo.bilevel.lookahead import LookaheadConfig, LookaheadStep, lookahead, lookahead_step
from weightzoo.bilevel.metaset import MetaSet, MetaSetConfig, VirtualStepConfig
from weightzoo.data.bias import BiasSpec, inject_bias
from weightzoo.data.partial import candidate_sets, check_candidates
from weightzoo.data.sources import DataSplits, list_datasets, load_dataset
from weightzoo.losses import LOSS_NAMES, class_balanced_weights, per_sample_loss
from weightzoo.methods.base import Batch, Method, RunContext, StepOutput
from weightzoo.methods.bilevel import BilevelMethod
from weightzoo.methods.fixmatch import (
    FixMatch,
    FixMatchConfig,
    FixMatchMetaConfig,
    fixmatch_unlabeled_loss,
    threshold_mask,
)
from weightzoo.methods.frozen import FrozenConfig, FrozenWeighting
from weightzoo.methods.meta_weighting import MetaConfig, MetaWeighting, MetaWeightingConfig
from weightzoo.methods.plain import PlainLoss
from weightzoo.methods.proden import Proden, ProdenConfig
from weightzoo.methods.registry import MethodSpec, build_method, method_names, method_spec, register_method
from weightzoo.models import build_model, list_models
from weightzoo.partial_regime import RegimeSection
from weightzoo.pipeline import apply_weighter, prepare_data, train_recipe, train_with_baselines
from weightzoo.recipe import Recipe, load_recipe
from weightzoo.training.engine import EpochRun, Schedule, Trainer, TrainingSet
from weightzoo.training.joint import fit_jointly
from weightzoo.training.randaugment import strong_view
from weightzoo.weighting.families import TaskFamilies, class_counts
from weightzoo.weighting.learned_loss import LearnedRobustLoss
from weightzoo.weighting.nets import CMWNet, MWNet, WeighterConfig, build_weighter
from weightzoo.weighting.reduction import LossTerm, reduce_weighted, total_loss
from weightzoo.weighting.sample_weighting import SampleWeighting
from weightzoo.weighting.weighted_loss import WeightedLoss

__all__ = [
    "LOSS_NAMES", "Batch", "BilevelMethod", "LearnedRobustLoss", "MetaSet", "MetaSetConfig",
    "VirtualStepConfig", "Famus", "FamusConfig",
    "BiasSpec", "BilevelProblem", "CMWNet", "DataSplits", "FixMatch", "FixMatchConfig",
    "FixMatchMetaConfig", "FrozenConfig",
    "FrozenWeighting", "LookaheadConfig", "LossTerm", "MWNet", "MetaConfig", "MetaGradient",
    "MetaGradientEstimator", "MetaWeighting", "MetaWeightingConfig", "Method", "MethodSpec",
    "PlainLoss", "Proden", "ProdenConfig", "Provenance", "RegimeSection",
    "Recipe", "Recommendation", "RunContext", "SampleWeighting", "Schedule", "StepOutput",
    "TaskFamilies", "Trainer", "TrainingSet", "EpochRun", "fit_jointly", "WeightedLoss",
    "WeighterConfig", "WeighterFileError",
    "WeighterNotFoundError", "apply_weighter", "build_estimator", "build_method", "build_model",
    "build_weighter", "candidate_sets", "class_balanced_weights", "check_candidates", "class_counts",
    "estimator_names",
    "fixmatch_unlabeled_loss", "strong_view", "threshold_mask",
    "inject_bias", "list_datasets",
    "list_models", "load_artifact", "load_dataset", "load_pretrained", "load_recipe", "lookahead",
    "lookahead_step", "LookaheadStep",
    "method_names", "method_spec", "recommend", "per_sample_loss", "prepare_data", "push_to_hub",
    "reduce_weighted", "register_estimator", "register_method", "resolve", "save_artifact",
    "total_loss", "train_recipe", "train_with_baselines", "validate_artifact",
]
__version__ = "0.2.0"
