"""MultimodalEncoder: text + image towers projected to a common dim D, TFN fusion, L2-normalised outputs.

TFN fusion (MIM): h = MLP(vec([h_img; 1] outer [h_txt; 1])). A missing image uses h_img = 0, so the
outer product still carries the text terms and the constant.
Saved as `encoder.pt` (state_dict) + `config.json` + `tokenizer/`; loaded with weights_only=True.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.content.images import load_image, to_unit_tensor
from training.content.towers import EFFICIENTNET_LITE0, MINILM, ImageTower, TextTower

ARCH = 2  # bump when forward semantics change without a config change; enters encoder_version()
WEIGHTS = "encoder.pt"
CONFIG = "config.json"
TOKENIZER = "tokenizer"


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture and what trains. Defaults: packaged MiniLM + packaged pretrained EfficientNet-Lite0.

    image_size / image_trainable_layers = None take the image source's default: EfficientNet-Lite0
    128 px (posters are ~150x220; 128 px runs ~3-4x faster than 224 px on CPU, see
    training/README.md) with the top MBConv block + head conv trainable; the seeded ViT 64 px, all
    layers trainable (it starts from random weights)."""

    dim: int = 128  # D, common output dim of img / txt / fused
    text_source: str = MINILM  # "minilm" | "tiny" (random small BERT, tests) | local model folder
    text_max_len: int = 48
    text_trainable_layers: int = 1  # top encoder layers that train; -1 = all, 0 = projection only
    tiny_text_hidden: int = 32
    tiny_text_layers: int = 2
    image_source: str = (
        EFFICIENTNET_LITE0  # | "vit" (small seeded ViT below) | local ViT checkpoint folder
    )
    image_size: int | None = None  # input pixels (square); None = the source's default
    image_patch: int = 8  # image_patch / hidden / layers / heads: the seeded ViT only
    image_hidden: int = 128
    image_layers: int = 4
    image_heads: int = 4
    image_trainable_layers: int | None = (
        None  # top layers / blocks that train; -1 = all, 0 = projection only
    )
    fusion_hidden: int = 256
    dropout: float = 0.1

    @property
    def input_size(self) -> int:
        if self.image_size is not None:
            return int(self.image_size)
        return 128 if self.image_source == EFFICIENTNET_LITE0 else 64

    @property
    def image_layers_trained(self) -> int:
        if self.image_trainable_layers is not None:
            return int(self.image_trainable_layers)
        return 1 if self.image_source == EFFICIENTNET_LITE0 else -1


class MultimodalEncoder(nn.Module):
    """Item encoder; `encode` keeps gradients (training), `embed` is batched no_grad inference."""

    def __init__(self, cfg: EncoderConfig, text: TextTower, image: ImageTower):
        super().__init__()
        self.cfg = cfg
        self.text = text
        self.image = image
        self.text_proj = nn.Linear(text.hidden_size, cfg.dim)
        self.image_proj = nn.Linear(image.hidden_size, cfg.dim)
        self.fusion = nn.Sequential(
            nn.Linear((cfg.dim + 1) ** 2, cfg.fusion_hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.fusion_hidden, cfg.dim),
        )
        self.set_trainable()

    @classmethod
    def build(cls, cfg: EncoderConfig) -> MultimodalEncoder:
        """Towers from their sources (local folders only); projections and fusion freshly initialised."""
        text = TextTower.build(
            cfg.text_source, cfg.text_max_len, cfg.tiny_text_hidden, cfg.tiny_text_layers
        )
        image = ImageTower.build(
            cfg.image_source,
            cfg.input_size,
            cfg.image_patch,
            cfg.image_hidden,
            cfg.image_layers,
            cfg.image_heads,
        )
        return cls(cfg, text, image)

    def set_trainable(self) -> None:
        """Freeze per config: top text layers, image layers, and always the projections + fusion."""
        self.text.set_trainable(self.cfg.text_trainable_layers)
        self.image.set_trainable(self.cfg.image_layers_trained)
        for head in (self.text_proj, self.image_proj, self.fusion):
            head.requires_grad_(True)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part: text backbone, image backbone, heads (projections + fusion)."""

        def trainable(module: nn.Module) -> list[nn.Parameter]:
            return [p for p in module.parameters() if p.requires_grad]

        heads = trainable(self.text_proj) + trainable(self.image_proj) + trainable(self.fusion)
        return {"text": trainable(self.text), "image": trainable(self.image), "heads": heads}

    @property
    def image_size(self) -> int:
        return self.image.image_size

    # -- forward pieces (with gradients) ------------------------------------------------------------
    def text_vectors(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(texts)), dim=-1)

    def image_vectors(self, pixels01: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image(pixels01)), dim=-1)

    def fuse(self, img: torch.Tensor, img_mask: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """TFN: MLP(vec([h_img; 1] outer [h_txt; 1])), h_img zeroed where the image is missing.

        h_img, h_txt (unit vectors) enter rescaled by sqrt(D), i.e. to unit RMS per coordinate: with
        unit-norm entries the constant 1 terms swamp the products and every fused vector starts out
        nearly identical (mean cosine 0.998 measured on MovieLens vs 0.27 rescaled).
        """
        scale = float(self.cfg.dim) ** 0.5
        ones = txt.new_ones(txt.shape[0], 1)
        a = torch.cat([scale * img * img_mask.unsqueeze(-1).to(img.dtype), ones], dim=-1)
        b = torch.cat([scale * txt, ones], dim=-1)
        outer = (a.unsqueeze(2) * b.unsqueeze(1)).flatten(1)
        return F.normalize(self.fusion(outer), dim=-1)

    def features(self, texts: list[str], images: list) -> dict[str, torch.Tensor]:
        """Pooled backbone outputs: txt_feat (B, Ht), img_feat (B, Hi) (zero rows where no image), img_mask.

        images: B of path / PIL / HxWx3 array / None; unreadable images count as missing."""
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        txt_feat = self.text(list(texts))
        arrays = [load_image(im, self.image_size) for im in images]
        img_mask = torch.tensor([a is not None for a in arrays], dtype=torch.bool)
        img_feat = txt_feat.new_zeros(len(arrays), self.image.hidden_size)
        if bool(img_mask.any()):
            present = self.image(to_unit_tensor([a for a in arrays if a is not None]))
            img_feat = img_feat.index_copy(0, img_mask.nonzero().squeeze(1), present)
        return {"txt_feat": txt_feat, "img_feat": img_feat, "img_mask": img_mask}

    def heads(
        self, txt_feat: torch.Tensor, img_feat: torch.Tensor, img_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Projections + TFN on backbone features: img (zero rows where no image), img_mask, txt, fused."""
        txt = F.normalize(self.text_proj(txt_feat), dim=-1)
        img = F.normalize(self.image_proj(img_feat), dim=-1) * img_mask.unsqueeze(-1).to(txt.dtype)
        return {
            "img": img,
            "img_mask": img_mask,
            "txt": txt,
            "fused": self.fuse(img, img_mask, txt),
        }

    def encode(self, texts: list[str], images: list) -> dict[str, torch.Tensor]:
        """With gradients: img, img_mask, txt, fused (see `heads`) plus the backbone features."""
        feats = self.features(texts, images)
        return {**feats, **self.heads(feats["txt_feat"], feats["img_feat"], feats["img_mask"])}

    @torch.no_grad()
    def embed(self, texts: list[str], images: list, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Batched inference: img (B,D) float32 (zero rows where no image), img_mask (B,) bool,
        txt (B,D), fused (B,D)."""
        was_training = self.training
        self.eval()
        parts: dict[str, list[np.ndarray]] = {"img": [], "img_mask": [], "txt": [], "fused": []}
        try:
            for start in range(0, len(texts), batch_size):
                out = self.encode(
                    list(texts[start : start + batch_size]),
                    list(images[start : start + batch_size]),
                )
                for key in parts:
                    parts[key].append(out[key].cpu().numpy())
        finally:
            self.train(was_training)
        if not parts["txt"]:
            d = self.cfg.dim
            return {
                "img": np.zeros((0, d), np.float32),
                "img_mask": np.zeros(0, bool),
                "txt": np.zeros((0, d), np.float32),
                "fused": np.zeros((0, d), np.float32),
            }
        out_np = {key: np.concatenate(vals) for key, vals in parts.items()}
        for key in ("img", "txt", "fused"):
            out_np[key] = out_np[key].astype(np.float32, copy=False)
        out_np["img_mask"] = out_np["img_mask"].astype(bool)
        return out_np

    # -- identity, persistence ----------------------------------------------------------------------
    def encoder_version(self) -> str:
        """Short sha256 over the JSON config and every state_dict tensor (name, dtype, shape, bytes)."""
        config = {"arch": ARCH, **dataclasses.asdict(self.cfg)}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, directory: str | Path) -> str:
        """Write state_dict, config (with backbone configs and version) and tokenizer; return the version."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        version = self.encoder_version()
        torch.save(self.state_dict(), out / WEIGHTS)
        self.text.tokenizer.save_pretrained(out / TOKENIZER)
        meta = {
            "format": 1,
            "arch": ARCH,
            "version": version,
            "encoder": dataclasses.asdict(self.cfg),
            "text_backbone": self.text.backbone_config(),
            "image_backbone": self.image.backbone_config(),
        }
        (out / CONFIG).write_text(json.dumps(meta, indent=1, sort_keys=True))
        return version

    @classmethod
    def load(cls, directory: str | Path) -> MultimodalEncoder:
        """Rebuild from config.json, load weights with weights_only=True, check the stored version."""
        src = Path(directory)
        meta = json.loads((src / CONFIG).read_text())
        if meta.get("arch") != ARCH:
            raise ValueError(
                f"{src}: encoder arch {meta.get('arch')} saved, this code is arch {ARCH}"
            )
        cfg = EncoderConfig(**meta["encoder"])
        text = TextTower.from_saved(meta["text_backbone"], src / TOKENIZER, cfg.text_max_len)
        image = ImageTower.from_saved(meta["image_backbone"])
        model = cls(cfg, text, image)
        model.load_state_dict(torch.load(src / WEIGHTS, map_location="cpu", weights_only=True))
        if model.encoder_version() != meta["version"]:
            raise ValueError(
                f"{src}: weights do not match the recorded encoder_version {meta['version']}"
            )
        return model


def base_encoder(cfg: EncoderConfig | None = None, seed: int = 7) -> MultimodalEncoder:
    """The untrained starting point (packaged MiniLM + EfficientNet-Lite0, heads initialised from `seed`):
    the same seed and config give the same weights, hence the same encoder_version."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MultimodalEncoder.build(cfg or EncoderConfig()).eval()


def load_or_base(directory: str | Path, seed: int = 7) -> MultimodalEncoder:
    """The encoder saved in `directory` (a folder or a symlink to one) if there is one, else the
    base encoder."""
    path = Path(directory)
    return (
        MultimodalEncoder.load(path).eval()
        if (path / CONFIG).is_file()
        else base_encoder(seed=seed)
    )
