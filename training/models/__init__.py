"""CTR model zoo (torch + numpy only; the online ranker imports the same classes).

`MODELS` maps a name to its class; `build_model("ciubm_<backbone>", cfg)` wraps any of them in CiUBM.
Every model: `forward(batch) -> {"logit": (B,), "aux_loss": scalar}`, batch as in CONTRACTS.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.models.avgpool import AvgPool
from training.models.base import CTRModel, FeatureEmbeddings, ModelConfig
from training.models.bst import BST
from training.models.ciubm import PREFIX as CIUBM_PREFIX
from training.models.ciubm import CiUBM
from training.models.dien import DIEN
from training.models.din import DIN
from training.models.dmae import DMAE
from training.models.sim import SIM
from training.models.simtier import SimTier
from training.models.twin import TWIN

MODELS: dict[str, type[CTRModel]] = {
    cls.name: cls for cls in (AvgPool, DIN, DIEN, BST, SIM, TWIN, SimTier, DMAE)
}


def model_names() -> list[str]:
    """Every buildable name: the backbones, then `ciubm_<backbone>` for each."""
    return [*MODELS, *(CIUBM_PREFIX + name for name in MODELS)]


def build_model(name: str, cfg: ModelConfig) -> CTRModel:
    """A fresh model by registry name; "ciubm_<backbone>" wraps the backbone in CiUBM."""
    if name.startswith(CIUBM_PREFIX):
        return CiUBM(cfg, build_model(name[len(CIUBM_PREFIX) :], cfg))
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    return MODELS[name](cfg)


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> CTRModel:
    """Load a model written by `CTRModel.save` (state_dict via weights_only=True + config.json)."""
    return CTRModel.load(directory, map_location)


__all__ = [
    "AvgPool",
    "BST",
    "CTRModel",
    "CiUBM",
    "DIEN",
    "DIN",
    "DMAE",
    "FeatureEmbeddings",
    "MODELS",
    "ModelConfig",
    "SIM",
    "SimTier",
    "TWIN",
    "build_model",
    "load_model",
    "model_names",
]
