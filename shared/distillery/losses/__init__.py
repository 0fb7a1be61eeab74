"""Losses: supervised (CE, focal, OHEM, confidence penalty), distillation (logit KD, CWD, DIST,
feature MSE, attention transfer) and the `Objective` that sums the terms a spec names.

The functional forms compute in float32 (autocast off) and average over valid pixels; the
`LOSSES` registry maps each spec `kind` to a builder of its `TermLoss` module.
"""

from distillery.losses.dist import dist_loss
from distillery.losses.entropy import confidence_penalty, mean_entropy, pixel_entropy
from distillery.losses.features import (
    FeatureAdapter,
    attention_map,
    attention_transfer,
    feature_mse,
)
from distillery.losses.kd import channel_wise_kd, logit_kd
from distillery.losses.objective import Objective, build_objective
from distillery.losses.output import ModelOutput, run_with_taps
from distillery.losses.supervised import cross_entropy, focal_loss, ohem_loss
from distillery.losses.terms import LOSSES, TermContext, TermLoss

__all__ = [
    "LOSSES",
    "FeatureAdapter",
    "ModelOutput",
    "Objective",
    "TermContext",
    "TermLoss",
    "attention_map",
    "attention_transfer",
    "build_objective",
    "channel_wise_kd",
    "confidence_penalty",
    "cross_entropy",
    "dist_loss",
    "feature_mse",
    "focal_loss",
    "logit_kd",
    "mean_entropy",
    "ohem_loss",
    "pixel_entropy",
    "run_with_taps",
]
