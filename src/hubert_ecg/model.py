"""The HuBERT-ECG network in plain PyTorch, readable top to bottom.

Data flow for a batch of flattened 12-lead windows ``x`` of shape (B, L) (L = 6000 for 5 s at 100 Hz):

    x (B, L)
      -> FeatureExtractor      conv stem, GroupNorm on conv 0 only, GELU     -> (B, C, T)   T = 93
      -> FeatureProjection     LayerNorm(C) -> Linear(C, H) -> Dropout        -> (B, T, H)
      -> span masking          masked tokens <- masked_spec_embed (training only, when asked)
      -> Encoder               x + PositionalConv(x) -> LayerNorm -> Dropout
                               -> N post-LN transformer layers                -> (B, T, H)
      -> heads                 codebook_logits: cosine(Linear(h), codebook) / 0.1 per codebook
                               classifier: masked mean pool -> dropout -> linear | MLP | cosine

Module and parameter names equal the Hugging Face ``HubertModel`` names so that published weights
load without renaming (see :mod:`hubert_ecg.checkpoint`). Attention runs through
``torch.nn.functional.scaled_dot_product_attention``; masks are sampled with torch ops on the
model's device, and padded tokens are never masked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import (
    CheckpointInfo,
    HeadConfig,
    ModelConfig,
    create_config,
    token_mask_from_sample_mask,  # noqa: F401  (re-exported: defined in config)
)
from .hub import PretrainedMixin  # save/load base class; never imports this module

_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


def _members(modules: nn.ModuleList, kind: type[_ModuleT]) -> Sequence[_ModuleT]:
    """``modules`` typed as a sequence of ``kind`` (``kind`` only informs the type checker).

    ``nn.ModuleList`` indexes and iterates as plain ``nn.Module``, so attribute access on its members
    type-checks as ``Tensor | Module``. Every list passed here is built from ``kind`` alone in this
    module's constructors, so the cast holds by construction; it is the one cast in the model and
    costs nothing at run time (no copy, no isinstance per forward).
    """
    return cast("Sequence[_ModuleT]", modules)


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------
def sample_span_mask(
    batch: int,
    num_tokens: int,
    *,
    mask_prob: float,
    mask_length: int = 1,
    min_masks: int = 2,
    token_mask: Tensor | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    scores: Tensor | None = None,
    u: Tensor | None = None,
) -> Tensor:
    """Sample HuBERT/wav2vec2 span masks on ``device`` with torch ops only. Returns bool (B, T).

    Per sample with ``n`` valid tokens: ``max(min_masks, int(mask_prob * n / mask_length + u))``
    span starts (u ~ U[0, 1) once per call, as in wav2vec2), drawn without replacement among valid
    positions that leave room for the span (start <= n - mask_length, as wav2vec2), each covering
    ``mask_length`` tokens; padded tokens are never masked. With
    p = 0.33, span 1 and 93 valid tokens every sample gets 30 or 31 masked tokens.

    ``scores`` (B, T) and ``u`` may be passed in: distributed training draws them for the global
    batch from one step-seeded generator and hands each rank its rows, so the masks do not depend
    on the number of processes.
    """
    if token_mask is None:
        # The device comes from what was passed in: a CPU mask meeting CUDA scores fails at step 1.
        if scores is not None:
            device = scores.device
        elif u is not None:
            device = u.device
        token_mask = torch.ones(batch, num_tokens, dtype=torch.bool, device=device)
    device = token_mask.device
    valid = token_mask.sum(-1)  # (B,)
    if u is None:
        u = torch.rand((), device=device, generator=generator)
    num_spans = (mask_prob * valid / mask_length + u).floor().long().clamp(min=min_masks)
    num_spans = torch.minimum(num_spans, valid // mask_length)
    position = torch.arange(num_tokens, device=device)
    # As wav2vec2: a span starts where it fits inside the sample's valid length (not across padding).
    eligible = token_mask & (position <= (valid - mask_length).unsqueeze(-1))
    if scores is None:
        scores = torch.rand(batch, num_tokens, device=device, generator=generator)
    scores = scores.masked_fill(~eligible, -1.0)
    rank = scores.argsort(dim=-1, descending=True).argsort(dim=-1)
    starts = (rank < num_spans.unsqueeze(-1)) & eligible
    mask = starts.clone()
    for offset in range(1, mask_length):
        mask[:, offset:] |= starts[:, :-offset]
    return mask & token_mask


# ---------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """Conv1d -> optional GroupNorm(C, C) (a per-channel norm over time) -> GELU. (B, C_in, L) -> (B, C, L')."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool, group_norm: bool
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.layer_norm = nn.GroupNorm(out_channels, out_channels, affine=True) if group_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.gelu(x)


def _patches(x: Tensor, kernel: int, stride: int) -> Tensor:
    """(B, L) -> (B, T, k) frames of ``kernel`` samples every ``stride`` samples.

    ``Tensor.unfold`` is a view: exact, no FLOPs (a one-hot conv gives the same numbers on a CPU
    but on a GPU runs through cuDNN, whose TF32 default rounds inputs to 10 mantissa bits). Only
    under ONNX export the one-hot conv is used: the exporter turns unfold into a Slice per frame.
    """
    if torch.onnx.is_in_onnx_export():
        one_hot = torch.eye(kernel, device=x.device, dtype=x.dtype).unsqueeze(1)  # (k, 1, k)
        return F.conv1d(x.unsqueeze(1), one_hot, stride=stride).transpose(1, 2)
    return x.unfold(-1, kernel, stride)


def _first_conv_group_norm(layer: ConvLayer, x: Tensor) -> Tensor:
    """Conv1d(1 -> C) + GroupNorm(C, C) + GELU as one batched matmul. (B, L) -> (B, T, C), time-major.

    The per-channel GroupNorm is affine in the conv output, and the mean and variance of channel
    c over time are ``w_c . mean(patch)`` and ``w_c^T Cov(patch) w_c``: both follow from the
    (k x k) moments of the input patches (k = 10). So the norm folds into per-sample weights, and
    the (B, C, 1498) activation is written once instead of three times (conv, norm, GELU).
    Centring the patches first keeps bf16 from cancelling a large DC offset against its mean.
    """
    conv, norm = layer.conv, layer.layer_norm
    assert norm is not None
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    weight = conv.weight.squeeze(1)  # (C, k)
    with torch.autocast(x.device.type, enabled=False):
        # The moments need float32: the variance of a bf16 product would be off by ~1%.
        patches = _patches(x.float(), kernel, stride)  # (B, T, k)
        centred = patches - patches.mean(1, keepdim=True)
        cov = centred.transpose(1, 2) @ centred / patches.shape[1]  # (B, k, k)
        w32 = weight.float()
        variance = ((w32 @ cov) * w32).sum(-1)  # (B, C); the conv bias cancels in the norm
        scale = norm.weight.float() * torch.rsqrt(variance + norm.eps)  # (B, C)
        folded = w32.T.unsqueeze(0) * scale.unsqueeze(1)  # (B, k, C)
    # Back to the parameters' dtype, so that a model cast to bf16 stays bf16 (autocast recasts anyway).
    dtype = weight.dtype
    shift = norm.bias.to(dtype).expand(x.shape[0], 1, -1)
    return F.gelu(torch.baddbmm(shift, centred.to(dtype), folded.to(dtype)))


def _strided_conv_time_major(layer: ConvLayer, x: Tensor) -> Tensor:
    """Conv1d(k, stride s) + GELU on time-major (B, T, C) input as two GEMMs; needs s <= k <= 2s.

    Frames are grouped in blocks of s (a free reshape); output t covers block t and the first
    k - s frames of block t + 1. So y_t = block_t @ W[:, :, :s] + block_{t+1}[:k-s] @ W[:, :, s:],
    two dense GEMMs over contiguous rows instead of an im2col copy. (B, T, C) -> (B, T', C').
    """
    conv = layer.conv
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    batch, frames, channels = x.shape
    out_frames = (frames - kernel) // stride + 1
    if frames % stride:
        x = F.pad(x, (0, 0, 0, stride - frames % stride))
    blocks = x.reshape(-1, stride * channels)  # (B * T/s, s*C), row = one block of s frames
    weight = conv.weight  # (C', C, k)
    head = weight[:, :, :stride].permute(0, 2, 1).reshape(weight.shape[0], stride * channels)
    y = F.linear(blocks, head, conv.bias).view(batch, -1, weight.shape[0])[:, :out_frames]
    if kernel > stride:
        tail = weight[:, :, stride:].permute(0, 2, 1).reshape(weight.shape[0], (kernel - stride) * channels)
        z = F.linear(blocks[:, : (kernel - stride) * channels], tail).view(batch, -1, weight.shape[0])
        y = y + z[:, 1 : out_frames + 1]
    return F.gelu(y)


class FeatureExtractor(nn.Module):
    """The conv stem: (B, L) samples -> (B, C, T) frames (``forward``) or (B, T, C) (``time_major``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        channels = (1, *config.conv_dim)
        self.conv_layers = nn.ModuleList(
            ConvLayer(channels[i], channels[i + 1], k, s, config.conv_bias, group_norm=(i == 0))
            for i, (k, s) in enumerate(zip(config.conv_kernel, config.conv_stride))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.time_major(x).transpose(1, 2)

    def time_major(self, x: Tensor) -> Tensor:
        """(B, L) -> (B, T, C). Same numbers as the Conv1d chain (to float32 rounding), about 2x
        faster: the first conv and its GroupNorm fold into one matmul, and the strided convs run
        as GEMMs on time-major frames, which is also the layout the projection wants."""
        conv_layers = _members(self.conv_layers, ConvLayer)
        first = conv_layers[0]
        if first.layer_norm is not None:
            h = _first_conv_group_norm(first, x)
        else:
            h = first(x.unsqueeze(1)).transpose(1, 2)
        for layer in conv_layers[1:]:
            kernel, stride = layer.conv.kernel_size[0], layer.conv.stride[0]
            if layer.layer_norm is None and stride <= kernel <= 2 * stride:
                h = _strided_conv_time_major(layer, h)
            else:  # not in any published stem; kept general
                h = layer(h.transpose(1, 2)).transpose(1, 2)
        return h


class FeatureProjection(nn.Module):
    """LayerNorm(C) -> Linear(C, H) -> Dropout. (B, T, C) -> (B, T, H)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose weight is ``g * v / ||v||`` with the norm over all dims but the kernel axis.

    Parameters keep the classic names ``weight_g`` (1, 1, K) and ``weight_v`` (H, H/groups, K) so
    both published spellings map onto them.
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, 0.0, 2.0 * math.sqrt(1.0 / (kernel * channels / groups)))
        with torch.no_grad():
            self.weight_g.copy_(torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True))

    def weight(self) -> Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class PositionalConvEmbedding(nn.Module):
    """Relative positions from a wide grouped conv (kernel 128, 16 groups). (B, T, H) -> (B, T, H)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.conv = WeightNormConv1d(
            config.hidden_size, config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups
        )
        # An even kernel with padding K/2 yields one frame too many; drop the last one.
        self.trim = 1 if config.num_conv_pos_embeddings % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention through SDPA. (B, T, H) and key mask (B, T) bool -> (B, T, H)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        batch, tokens, hidden = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(y.transpose(1, 2).reshape(batch, tokens, hidden))


class FeedForward(nn.Module):
    """Linear(H, FFN) -> GELU -> Dropout -> Linear(FFN, H) -> Dropout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer layer: LN(x + Attn(x)) then LN(x + FFN(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = self.layer_norm(x + self.dropout(self.attention(x, key_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    """x + PosConv(x) -> LayerNorm -> Dropout -> layers (with layerdrop and optional checkpointing)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layerdrop = config.layerdrop
        self.gradient_checkpointing = config.gradient_checkpointing
        self.pos_conv_embed = PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self, x: Tensor, token_mask: Tensor | None = None, output_hidden_states: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        if token_mask is not None:
            # Padded frames must not leak into the positional conv of their neighbours.
            x = x * token_mask.unsqueeze(-1).to(x.dtype)
        x = self.dropout(self.layer_norm(x + self.pos_conv_embed(x)))
        hidden_states: list[Tensor] = [x] if output_hidden_states else []
        # Layerdrop decisions come from the CPU generator: no device sync in the step.
        skips = (
            (torch.rand(len(self.layers)) < self.layerdrop).tolist()
            if self.training and self.layerdrop > 0
            else [False] * len(self.layers)
        )
        for layer, skip in zip(self.layers, skips):
            if not skip:
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(layer, x, token_mask, use_reentrant=False)
                else:
                    x = layer(x, token_mask)
            if output_hidden_states:
                hidden_states.append(x)
        return x, (tuple(hidden_states) if output_hidden_states else None)


class CosineClassifier(nn.Module):
    """logits = scale * cos(pooled, label vector). (B, H) -> (B, num_labels)."""

    def __init__(self, hidden: int, head: HeadConfig) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(head.num_labels, hidden)
        scale = torch.tensor(math.log(head.cosine_scale))
        if head.learn_cosine_scale:
            self.log_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale)

    def forward(self, pooled: Tensor) -> Tensor:
        # In float32 even under autocast: a bf16 cosine is off by ~4e-3, times the scale (~10).
        with torch.autocast(pooled.device.type, enabled=False):
            cos = F.normalize(pooled.float(), dim=-1) @ F.normalize(self.label_embedding.weight.float(), dim=-1).T
            return cos * self.log_scale.float().exp()


def build_classifier(hidden: int, head: HeadConfig) -> nn.Module:
    """Linear (keys ``classifier.weight``), MLP (``classifier.0``/``classifier.2``) or cosine head."""
    if head.type == "linear":
        return nn.Linear(hidden, head.num_labels)
    if head.type == "mlp":
        if head.hidden_size is None:  # HeadConfig.__post_init__ rejects this first; narrows the type
            raise ValueError("an MLP head needs hidden_size")
        activations = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
        if head.activation not in activations:
            raise ValueError(f"unknown MLP activation {head.activation!r}; choose one of {sorted(activations)}")
        return nn.Sequential(
            nn.Linear(hidden, head.hidden_size),
            activations[head.activation](),
            nn.Linear(head.hidden_size, head.num_labels),
        )
    return CosineClassifier(hidden, head)


@dataclass
class HubertECGOutput:
    """Encoder outputs. Shapes: last_hidden_state (B, T, H); hidden_states: N+1 of (B, T, H);
    token_mask / mask_time_indices (B, T) bool; logits (B, num_labels); pooled (B, H)."""

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    token_mask: Tensor | None = None
    mask_time_indices: Tensor | None = None
    pooled: Tensor | None = None
    logits: Tensor | None = None

    # Behaves like transformers' ModelOutput: the fields that are set, in order, are its keys, so
    # out.logits, out["logits"] and out[i] (the i-th field that is set) all work.
    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{key!r} is not set in this output (set: {', '.join(self.keys())})")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class HubertECG(PretrainedMixin, nn.Module):
    """HuBERT-ECG encoder with optional codebook (pre-training) and classification (fine-tuning) heads.

    ``HubertECG.from_pretrained(dir_or_hub_id, revision=...)``, ``save_pretrained(dir)`` and
    ``push_to_hub(repo_id)`` come from :class:`~hubert_ecg.hub.PretrainedMixin`.

    ``forward(x)`` takes (B, L) float32 flattened 12-lead windows at the stem's rate (leads I..V6
    end to end) and an optional sample-level ``attention_mask`` (B, L) (True = real signal).
    Masking happens only when asked (``apply_mask=True`` or ``mask_time_indices``), never as a
    side effect of train mode.
    """

    def __init__(self, config: ModelConfig, info: CheckpointInfo | None = None) -> None:
        super().__init__()
        self.config = config
        self.info = info or CheckpointInfo()
        self.feature_extractor = FeatureExtractor(config)
        self.feature_projection = FeatureProjection(config)
        self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = Encoder(config)
        self.final_proj = nn.ModuleList(
            nn.Linear(config.hidden_size, config.classifier_proj_size) for _ in config.vocab_sizes
        )
        self.label_embedding = nn.ModuleList(nn.Embedding(k, config.classifier_proj_size) for k in config.vocab_sizes)
        self.classifier_dropout = nn.Dropout(config.head.dropout if config.head else 0.0)
        self.classifier = build_classifier(config.hidden_size, config.head) if config.head else None
        self.apply(self._init_weights)
        for name in self.inert_parameters(masking=True):
            # Never used by forward: frozen, so that DDP (find_unused_parameters=False) and the
            # optimizer never wait for a gradient that cannot come.
            self.get_parameter(name).requires_grad_(False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Initialisation as in wav2vec2/HuBERT (initializer_range 0.02, Kaiming for convs).
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # -- pieces usable on their own --------------------------------------------------------
    def token_mask(self, attention_mask: Tensor) -> Tensor:
        """Sample mask (B, L) -> token mask (B, T): a token is valid iff its whole receptive field is."""
        return self.config.token_mask(attention_mask.bool())

    def sample_mask(
        self, batch: int, num_tokens: int, token_mask: Tensor | None = None, device: torch.device | None = None
    ) -> Tensor:
        return sample_span_mask(
            batch,
            num_tokens,
            mask_prob=self.config.mask_time_prob,
            mask_length=self.config.mask_time_length,
            min_masks=self.config.mask_time_min_masks,
            token_mask=token_mask,
            device=device or self.masked_spec_embed.device,
        )

    def forward(
        self,
        input_values: Tensor,
        attention_mask: Tensor | None = None,
        *,
        apply_mask: bool = False,
        mask_time_indices: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> HubertECGOutput:
        if input_values.dim() != 2:
            raise ValueError(f"expected input of shape (batch, samples), got {tuple(input_values.shape)}")
        features = self.feature_extractor.time_major(input_values)  # (B, T, C)
        token_mask = self.token_mask(attention_mask) if attention_mask is not None else None
        hidden = self.feature_projection(features)
        if apply_mask and mask_time_indices is None:
            mask_time_indices = self.sample_mask(hidden.shape[0], hidden.shape[1], token_mask, hidden.device)
        if mask_time_indices is not None:
            hidden = torch.where(mask_time_indices.unsqueeze(-1), self.masked_spec_embed.to(hidden.dtype), hidden)
        last, hidden_states = self.encoder(hidden, token_mask, output_hidden_states)
        out = HubertECGOutput(
            last_hidden_state=last,
            hidden_states=hidden_states,
            token_mask=token_mask,
            mask_time_indices=mask_time_indices,
        )
        if self.classifier is not None:
            out.pooled = self.pool(last, token_mask)
            out.logits = self.classifier(self.classifier_dropout(out.pooled))
        return out

    @staticmethod
    def pool(hidden: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Mean over tokens, over valid tokens only when a mask is given. (B, T, H) -> (B, H)."""
        if token_mask is None:
            return hidden.mean(dim=1)
        weights = token_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def codebook_logits(self, hidden: Tensor) -> list[Tensor]:
        """Per codebook: cosine(final_proj(h), codebook rows) / temperature. (B, T, H) -> [(B, T, K_i)]."""
        if not self.final_proj:
            raise ValueError("this model has no pre-training codebooks (vocab_sizes is empty)")
        out = []
        for proj, codebook in zip(self.final_proj, _members(self.label_embedding, nn.Embedding)):
            projected = proj(hidden)
            # The cosine in float32 even under autocast (as torch.cosine_similarity in the reference):
            # a bf16 product divided by the temperature 0.1 would err by ~0.03 per logit.
            with torch.autocast(hidden.device.type, enabled=False):
                z = F.normalize(projected.float(), dim=-1, eps=1e-8)
                c = F.normalize(codebook.weight.float(), dim=-1, eps=1e-8)
                out.append((z @ c.T) / self.config.codebook_temperature)
        return out

    # -- head management -----------------------------------------------------------------------
    def set_codebooks(self, vocab_sizes: Sequence[int]) -> None:
        """Fresh codebooks (next pre-training iteration); keeps the projections if the count matches."""
        vocab_sizes = tuple(int(k) for k in vocab_sizes)
        proj = self.config.classifier_proj_size
        if len(vocab_sizes) != len(self.final_proj):
            self.final_proj = nn.ModuleList(nn.Linear(self.config.hidden_size, proj) for _ in vocab_sizes)
            self.final_proj.apply(self._init_weights)
        self.label_embedding = nn.ModuleList(nn.Embedding(k, proj) for k in vocab_sizes)
        self.label_embedding.apply(self._init_weights)
        self.update_config(vocab_sizes=vocab_sizes)
        self.to(self.masked_spec_embed.device)

    def set_head(self, head: HeadConfig | None, drop_codebooks: bool = True) -> None:
        """Attach a fresh fine-tuning head (or remove it); drops the codebooks by default."""
        self.classifier = build_classifier(self.config.hidden_size, head) if head else None
        if self.classifier is not None:
            self.classifier.apply(self._init_weights)
        self.classifier_dropout = nn.Dropout(head.dropout if head else 0.0)
        changes: dict[str, Any] = {"head": head}
        self.update_config(**changes)
        if drop_codebooks:
            self.drop_codebooks()
        self.to(self.masked_spec_embed.device)

    def drop_codebooks(self) -> None:
        """Remove the pre-training codebooks (fine-tuning does not use them)."""
        self.final_proj, self.label_embedding = nn.ModuleList(), nn.ModuleList()
        self.update_config(vocab_sizes=())

    def set_dropouts(
        self,
        *,
        hidden: float | None = None,
        attention: float | None = None,
        activation: float | None = None,
        feat_proj: float | None = None,
        layerdrop: float | None = None,
        classifier: float | None = None,
    ) -> None:
        """Change dropout rates in place (fine-tuning overrides); ``None`` keeps a rate."""
        changes: dict[str, Any] = {
            name: value
            for name, value in (
                ("hidden_dropout", hidden),
                ("attention_dropout", attention),
                ("activation_dropout", activation),
                ("feat_proj_dropout", feat_proj),
                ("layerdrop", layerdrop),
            )
            if value is not None
        }
        if classifier is not None and self.config.head is not None:
            from dataclasses import replace

            changes["head"] = replace(self.config.head, dropout=classifier)
        self.update_config(**changes)

    def update_config(self, **changes: Any) -> None:
        """Replace config fields and apply the ones that act at run time (dropouts, layerdrop,
        gradient checkpointing, masking); architecture fields must not change this way."""
        fixed = {
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "conv_dim",
            "conv_kernel",
            "conv_stride",
            "num_conv_pos_embeddings",
            "num_conv_pos_embedding_groups",
        }
        if fixed & set(changes):
            raise ValueError(f"cannot change architecture fields in place: {', '.join(sorted(fixed & set(changes)))}")
        c = self.config = self.config.replace(**changes)
        self.encoder.layerdrop, self.encoder.gradient_checkpointing = c.layerdrop, c.gradient_checkpointing
        self.feature_projection.dropout.p = c.feat_proj_dropout
        self.encoder.dropout.p = c.hidden_dropout
        for layer in _members(self.encoder.layers, EncoderLayer):
            layer.dropout.p = c.hidden_dropout
            layer.feed_forward.output_dropout.p = c.hidden_dropout
            layer.feed_forward.intermediate_dropout.p = c.activation_dropout
            layer.attention.dropout = c.attention_dropout
        if c.head is not None:
            self.classifier_dropout.p = c.head.dropout

    # -- what trains, and how (optimizer groups are built from this by runtime.param_groups) ---
    def inert_parameters(self, masking: bool) -> list[str]:
        """Names of parameters that get no gradient: the first conv's bias when GroupNorm follows
        (it cancels in the norm) and, when the job never masks (fine-tuning), ``masked_spec_embed``."""
        names = []
        first = _members(self.feature_extractor.conv_layers, ConvLayer)[0]
        if first.layer_norm is not None and first.conv.bias is not None:
            names.append("feature_extractor.conv_layers.0.conv.bias")
        if not masking:
            names.append("masked_spec_embed")
        return names

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay: biases, LayerNorm/GroupNorm weights, scalars (the
        cosine head's ``log_scale``) and single vectors (``masked_spec_embed``): everything below 2-D."""
        return {name for name, p in self.named_parameters() if p.ndim < 2}

    def num_layer_ids(self) -> int:
        """Depth levels for layer-wise LR decay: stem, embeddings, N layers, heads."""
        return self.config.num_hidden_layers + 3

    def layer_id(self, name: str) -> int:
        """Depth of a parameter: stem 0; embeddings (feature projection, positional conv, encoder
        LayerNorm, ``masked_spec_embed``) 1; transformer layer i -> i + 2; heads (codebooks,
        classifier) ``num_layer_ids() - 1``."""
        if name.startswith("feature_extractor."):
            return 0
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2]) + 2
        if name.startswith(("final_proj.", "label_embedding.", "classifier.")):
            return self.num_layer_ids() - 1
        return 1

    def num_parameters(self, backbone_only: bool = False) -> int:
        skip = ("final_proj.", "label_embedding.", "classifier.") if backbone_only else ()
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith(skip))


def create_model(
    size: str = "small",
    *,
    input_rate_hz: int = 100,
    vocab_sizes: Sequence[int] = (),
    head: HeadConfig | dict | None = None,
    **overrides: Any,
) -> HubertECG:
    """A randomly initialised model of a named size, e.g. ``create_model("small", vocab_sizes=[100])``."""
    if isinstance(head, dict):
        head = HeadConfig(**head)
    config = create_config(size, input_rate_hz=input_rate_hz, vocab_sizes=tuple(vocab_sizes), head=head, **overrides)
    return HubertECG(config)
