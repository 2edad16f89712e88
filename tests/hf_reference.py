"""Test-only helpers: build transformers' HubertModel with the HuBERT-ECG settings of a size."""

from __future__ import annotations

import pytest
import torch

from hubert_ecg.config import ModelConfig


def hf_config_dict(config: ModelConfig) -> dict:
    return dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        classifier_proj_size=config.classifier_proj_size,
        conv_dim=list(config.conv_dim),
        conv_kernel=list(config.conv_kernel),
        conv_stride=list(config.conv_stride),
        conv_bias=False,
        num_feat_extract_layers=len(config.conv_dim),
        feat_extract_norm="group",
        feat_extract_activation="gelu",
        feat_proj_layer_norm=True,
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=config.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=config.num_conv_pos_embedding_groups,
        layer_norm_eps=config.layer_norm_eps,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.1,
        feat_proj_dropout=0.0,
        final_dropout=0.1,
        layerdrop=config.layerdrop,
        mask_time_prob=0.33,
        mask_time_length=1,
        mask_time_min_masks=2,
        hidden_act="gelu",
        model_type="hubert_ecg",
        vocab_sizes=list(config.vocab_sizes),
        ensemble_length=len(config.vocab_sizes),
    )


def build_hf_model(config: ModelConfig, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    skipped = ("model_type", "vocab_sizes", "ensemble_length")
    hf_cfg = {k: v for k, v in hf_config_dict(config).items() if k not in skipped}
    model = transformers.HubertModel(transformers.HubertConfig(**hf_cfg, attn_implementation="eager"))
    return model.eval()
