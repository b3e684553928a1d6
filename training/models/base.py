"""`ModelConfig` (typed, JSON round-trip) and `CTRModel`, the base class every CTR model derives from.

A model owns the user/item/category embeddings and a head MLP over
concat(user emb, target item emb, interest); a subclass only says how the interest is built
(`interest`, or `encode` when it also has an auxiliary loss). Batches follow CONTRACTS.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from training.models.layers import MLP

Batch = dict[str, Tensor]

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
SIM_MODES = ("hard", "soft")
SIMTIER_SOURCES = ("fused", "per_modality")


# the papers' symbols, the names of configs and meta.json files written before they were renamed
LEGACY_NAMES = {"T": "seq_len", "l": "time_slices", "n": "sim_bins"}


def renamed(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with legacy keys (LEGACY_NAMES) under their current names."""
    return {LEGACY_NAMES.get(k, k): v for k, v in data.items()}


@dataclass(frozen=True)
class ModelConfig:
    """Every CTR model's settings. Vocabulary sizes include index 0 (= padding / unknown)."""

    n_users: int
    n_items: int
    n_cats: int
    emb_dim: int = 16  # per id field; an item is concat(item emb, cat emb) = 2 * emb_dim
    seq_len: int = 64  # history length (the papers' T)
    time_slices: int = 10  # interest-distribution time slices (DMAE's l)
    sim_bins: int = 10  # interest-distribution similarity bins (DMAE's n)
    mm_dim: int = 384  # fused multimodal vector dim (target_mm / hist_mm)
    mlp_dims: tuple[int, ...] = (200, 80)  # head MLP
    att_dims: tuple[int, ...] = (64, 32)  # DIN attention-unit MLP
    att_softmax: bool = (
        False  # DIN, SIM, SimTier, DMAE ID attention: masked-softmax weights (papers: raw weights)
    )
    dropout: float = 0.0
    # BST / TWIN / DMAE attention
    n_heads: int = 2
    n_layers: int = 1  # BST transformer layers
    # SIM / TWIN
    sim_mode: str = "soft"  # SIM search: "hard" (same category) | "soft" (top-k inner product)
    sim_topk: int = 16  # SIM soft-search k
    twin_topk: int = 16  # TWIN general-search-unit k
    # SimTier
    n_tiers: int = 10
    simtier_source: str = (
        "fused"  # "fused": ONE histogram of cos(target_mm, hist_mm) (the SimTier paper);
    )
    # "per_modality": one histogram per modality from sim_img / sim_txt, concatenated (a variant)
    # DMAE (the defaults are the full model; each use_* = False is one ablation of DMAE's Table 3)
    n_buckets: int = 10  # MIEU similarity buckets N_B (bucket = floor(r (N_B - 1)))
    window: int = 10  # MIFU sliding window (positions i, j interact when |i - j| <= window // 2)
    mask_prob: float = 0.2  # IDDU position masking
    lambda_dec: float = 0.5  # IDDU loss weight (DMAE's best on MovieLens)
    use_mieu_se: bool = (
        True  # False = "w/o MIEU-se": a plain bucket embedding replaces the similarity embedding
    )
    use_mieu_t: bool = (
        True  # False = "w/o MIEU-t": no time axis in the interest distribution (l = 1: IDDU
    )
    # reconstructs the n-bin distribution summed over the l time slices)
    use_mifu: bool = True  # False = "w/o MIFU": a masked mean per modality replaces the fusion unit
    use_iddu: bool = True  # False = "w/o IDDU": no decoder, no reconstruction loss (lambda_dec = 0)
    # CiUBM
    use_id: bool = True  # backbone ID interest
    use_content: bool = True  # sum_i a_ti^MM proj(h_i^MM)
    use_fusion: bool = True  # sum_i a_ti^MM h_i^ID
    ciubm_mean: bool = (
        False  # variant: divide a_ti^MM by the history length (a mean, not MIM eq. 7-9's sum)
    )
    # every model: user-ID dropout. While training, each row's user index is replaced by 0 (the unknown
    # user) with this probability, so row 0 learns a generic-user vector for users unseen in training
    # instead of staying untrained; eval mode never drops. A training-time rate, not the unseen share itself
    # (which can be far higher, e.g. ~90% of test rows on a temporal MovieLens split): it only has to give
    # row 0 enough updates without starving the per-user rows.
    user_dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in (
            "n_users",
            "n_items",
            "n_cats",
            "emb_dim",
            "seq_len",
            "time_slices",
            "sim_bins",
            "mm_dim",
            "n_heads",
            "n_layers",
            "sim_topk",
            "twin_topk",
            "n_tiers",
            "window",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_buckets < 2:
            raise ValueError(f"n_buckets must be >= 2, got {self.n_buckets}")
        if self.sim_mode not in SIM_MODES:
            raise ValueError(f"sim_mode must be one of {SIM_MODES}, got {self.sim_mode!r}")
        if not 0.0 <= self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in [0, 1), got {self.mask_prob}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.user_dropout < 1.0:
            raise ValueError(f"user_dropout must be in [0, 1), got {self.user_dropout}")
        if self.simtier_source not in SIMTIER_SOURCES:
            raise ValueError(
                f"simtier_source must be one of {SIMTIER_SOURCES}, got {self.simtier_source!r}"
            )
        if self.lambda_dec < 0:
            raise ValueError(f"lambda_dec must be >= 0, got {self.lambda_dec}")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error (a config from another code version)."""
        data = renamed(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**values)


class FeatureEmbeddings(nn.Module):
    """User, item and category embedding tables; index 0 = padding / unknown.

    Item and category row 0 is padding: kept at zero, never trained. User row 0 is the unknown user: it
    starts at zero and is trained through user-ID dropout (`user_index`), so a user unseen in training gets
    a learned generic-user vector, not an untrained row.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.user_dropout = cfg.user_dropout
        self.user = nn.Embedding(cfg.n_users, cfg.emb_dim)
        self.item = nn.Embedding(cfg.n_items, cfg.emb_dim, padding_idx=0)
        self.cat = nn.Embedding(cfg.n_cats, cfg.emb_dim, padding_idx=0)
        for table in (self.user, self.item, self.cat):
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[0].zero_()

    def user_index(self, user: Tensor) -> Tensor:
        """The user indices the model uses: in training mode each is replaced by 0 (unknown user) with
        probability `user_dropout` (torch's global RNG, so reproducible under torch.manual_seed); unchanged
        in eval mode."""
        if not self.training or self.user_dropout <= 0.0:
            return user
        drop = torch.rand(user.shape, device=user.device) < self.user_dropout
        return user.masked_fill(drop, 0)

    def users(self, user: Tensor) -> Tensor:
        """User representation (B,) -> (B, emb_dim), with user-ID dropout in training mode."""
        return self.user(self.user_index(user))

    def items(self, item: Tensor, cat: Tensor) -> Tensor:
        """Item representation concat(item emb, cat emb): (...,) -> (..., 2 * emb_dim)."""
        return torch.cat([self.item(item), self.cat(cat)], dim=-1)


class CTRModel(nn.Module):
    """Base CTR model: embeddings + `interest` (subclass) + head MLP -> logit.

    Subclasses set `name` and `batch_keys` (keys read beyond user/item/cat), build their modules, then call
    `build_head(interest_dim)`. `forward(batch) -> {"logit": (B,), "aux_loss": scalar}`.
    """

    name: ClassVar[str] = ""
    batch_keys: ClassVar[tuple[str, ...]] = ()
    BASE_KEYS: ClassVar[tuple[str, ...]] = ("user", "item", "cat")

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__()
        self.cfg = cfg
        self.embeddings = FeatureEmbeddings(cfg) if embeddings is None else embeddings
        self.item_dim = 2 * cfg.emb_dim
        self.interest_dim = 0

    # --- what subclasses use -------------------------------------------------------------------------
    def build_head(self, interest_dim: int) -> None:
        """Create the head MLP over concat(user emb, target item emb, interest of `interest_dim`)."""
        self.interest_dim = interest_dim
        in_dim = self.cfg.emb_dim + self.item_dim + interest_dim
        self.head = MLP(in_dim, self.cfg.mlp_dims, 1, self.cfg.dropout)

    def target(self, batch: Batch) -> Tensor:
        """Target item representation (B, 2d)."""
        return self.embeddings.items(batch["item"], batch["cat"])

    def history(self, batch: Batch) -> Tensor:
        """History item representations (B, T, 2d); padded positions are masked by `hist_mask`."""
        return self.embeddings.items(batch["hist_item"], batch["hist_cat"])

    def interest(self, batch: Batch) -> Tensor:
        """User interest (B, interest_dim)."""
        raise NotImplementedError

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(interest, aux_loss); models with an auxiliary loss override this instead of `interest`."""
        h = self.interest(batch)
        return h, h.new_zeros(())

    # --- fixed API -----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """Registry name (`build_model(model_name, cfg)` rebuilds this architecture)."""
        return self.name

    def required_keys(self) -> tuple[str, ...]:
        """Batch keys this model reads in its current mode (DMAE reads `dist_*` only while training)."""
        return self.BASE_KEYS + self.batch_keys

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        h, aux = self.encode(batch)
        x = torch.cat([self.embeddings.users(batch["user"]), self.target(batch), h], dim=-1)
        return {"logit": self.head(x).squeeze(-1), "aux_loss": aux}

    def save(self, directory: str | Path) -> Path:
        """Write `model.pt` (state_dict) and `config.json` ({"model": name, "config": {...}})."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), out / WEIGHTS_FILE)
        payload = {"model": self.model_name, "config": self.cfg.to_dict()}
        (out / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> CTRModel:
        """Rebuild the saved model (any registered name) and load its weights with weights_only=True."""
        from training.models import build_model  # the registry imports every model module

        src = Path(directory)
        payload = json.loads((src / CONFIG_FILE).read_text())
        model = build_model(payload["model"], ModelConfig.from_dict(payload["config"]))
        state = torch.load(src / WEIGHTS_FILE, map_location=map_location, weights_only=True)
        model.load_state_dict(state)
        return model
