"""Model configuration: named sizes, conv stems per input rate, and head settings.

A :class:`ModelConfig` is plain data (a dataclass that round-trips through JSON). It describes
the encoder of HuBERT-ECG (a wav2vec2/HuBERT post-LayerNorm transformer behind a 1-D conv stem)
plus its optional heads: the pre-training codebooks and a fine-tuning head.

Named sizes follow the published models (reference doc §1.2); named stems follow the
``--downsampling_factor`` table (§1.3). ``create_config("small")`` gives the released SMALL
architecture at 100 Hz.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

# Hidden size, layers, heads, FFN size, codebook projection size, pre-training layerdrop.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "small": dict(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        intermediate_size=2048,
        classifier_proj_size=256,
        layerdrop=0.1,
    ),
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        classifier_proj_size=256,
        layerdrop=0.1,
    ),
    "large": dict(
        hidden_size=960,
        num_hidden_layers=16,
        num_attention_heads=12,
        intermediate_size=3840,
        classifier_proj_size=512,
        layerdrop=0.0,
    ),
    # Not published: a few-second CPU model for tests, demos and smoke runs.
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        classifier_proj_size=32,
        layerdrop=0.0,
        conv_dim=(64, 64, 64, 64, 64),
        num_conv_pos_embedding_groups=4,
    ),
}

# Conv stems by input sampling rate: every stem turns 5 s x 12 leads into 93 tokens.
CONV_STEMS: dict[int, dict[str, tuple[int, ...]]] = {
    500: dict(conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2)),
    100: dict(conv_kernel=(10, 3, 3, 2, 2), conv_stride=(4, 2, 2, 2, 2)),
    50: dict(conv_kernel=(10, 3, 3, 2), conv_stride=(4, 2, 2, 2)),
}


# ---------------------------------------------------------------------------------------------
# Conv-stem geometry: the one home of receptive fields, token counts, token spans and token
# validity (used by the model, the hand-crafted features, the k-means targets and the loaders).
# ---------------------------------------------------------------------------------------------
def stem_layout(rate_hz: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kernels, strides) of the released stem for an input rate; a one-line error for other rates."""
    stem = CONV_STEMS.get(int(rate_hz)) if float(rate_hz).is_integer() else None
    if stem is None:
        raise ValueError(
            f"no default conv layout for fs={float(rate_hz)} Hz (known: "
            f"{', '.join(str(r) for r in sorted(CONV_STEMS, reverse=True))}); "
            "pass conv_kernels and conv_strides"
        )
    return tuple(stem["conv_kernel"]), tuple(stem["conv_stride"])


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Input samples one token depends on: ``1 + sum_i (k_i - 1) * prod_{j<i} s_j`` (82 at 100 Hz)."""
    field_, jump = 1, 1
    for k, s in zip(kernels, strides):
        field_ += (int(k) - 1) * jump
        jump *= int(s)
    return field_


def total_stride(strides: Sequence[int]) -> int:
    """Input samples between consecutive tokens (64 at 100 Hz)."""
    out = 1
    for s in strides:
        out *= int(s)
    return out


def num_tokens(num_samples: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Tokens the stem makes from ``num_samples`` samples: ``floor((L - k) / s) + 1`` per layer (0 if too short)."""
    length = int(num_samples)
    for k, s in zip(kernels, strides):
        if length < k:
            return 0
        length = (length - int(k)) // int(s) + 1
    return length


def token_spans(num_samples: int, kernels: Sequence[int], strides: Sequence[int]) -> np.ndarray:
    """int64 (T, 2): ``[start, stop)`` of the input samples token t depends on, ``[t S, t S + R)``."""
    count = num_tokens(num_samples, kernels, strides)
    if count == 0:
        raise ValueError(
            f"input of {num_samples} samples is shorter than the conv receptive field (kernels "
            f"{tuple(kernels)}, strides {tuple(strides)})"
        )
    starts = np.arange(count, dtype=np.int64) * total_stride(strides)
    return np.stack([starts, starts + receptive_field(kernels, strides)], axis=1)


MaskT = TypeVar("MaskT")


def token_mask_from_sample_mask(
    sample_mask: MaskT,
    conv_kernels: Sequence[int] = CONV_STEMS[100]["conv_kernel"],
    conv_strides: Sequence[int] = CONV_STEMS[100]["conv_stride"],
) -> MaskT:
    """Token-level mask from a sample-level mask: bool ``(B, L)`` -> bool ``(B, T)`` (numpy or torch).

    A token is valid iff every sample in its receptive field is valid (82 samples at stride 64 for
    the 100 Hz stem). Computed layer by layer -- output t of a conv layer sees inputs
    ``[s t, s t + k)`` -- which composes to the receptive field, for interior holes too. For a
    right-padded mask with ``v`` valid samples the count equals the HF length formula chained over
    the layers (0 when ``v`` is shorter than the receptive field). Stays on the input's device.
    """
    if len(conv_kernels) != len(conv_strides):
        raise ValueError(f"conv_kernels {tuple(conv_kernels)} and conv_strides {tuple(conv_strides)} differ in length")
    mask: Any = sample_mask
    for kernel, stride in zip(conv_kernels, conv_strides):
        length = mask.shape[-1]
        out_len = (length - kernel) // stride + 1
        if out_len < 1:
            raise ValueError(f"mask of length {length} is shorter than conv kernel {kernel}")
        stop = stride * (out_len - 1) + 1
        acc = mask[..., 0:stop:stride]
        for offset in range(1, kernel):
            acc = acc & mask[..., offset : offset + stop : stride]
        mask = acc
    return mask


HEAD_TYPES = ("linear", "mlp", "cosine")
TASKS = ("multi_label", "multi_class", "binary", "regression")


@dataclass
class HeadConfig:
    """Fine-tuning head: masked mean pooling -> dropout -> linear | MLP | cosine to label embeddings."""

    num_labels: int
    type: str = "linear"
    hidden_size: int | None = None  # MLP width
    activation: str = "tanh"  # MLP activation: tanh (reference default), relu, gelu, sigmoid
    dropout: float = 0.1
    # Cosine head: logits = scale * cos(pooled, label_vector). The reference used no scale (1.0,
    # frozen), which caps sigmoid outputs in [0.27, 0.73]; ours learns it by default.
    cosine_scale: float = 10.0
    learn_cosine_scale: bool = True

    def __post_init__(self) -> None:
        if self.type not in HEAD_TYPES:
            raise ValueError(f"head type must be one of {HEAD_TYPES}, got {self.type!r}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")
        if self.type == "mlp" and not self.hidden_size:
            raise ValueError("an MLP head needs hidden_size")


@dataclass
class ModelConfig:
    """Everything needed to build the network (weights aside)."""

    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    classifier_proj_size: int = 256
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (4, 2, 2, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    layerdrop: float = 0.1
    mask_time_prob: float = 0.33
    mask_time_length: int = 1
    mask_time_min_masks: int = 2
    # One codebook per k-means model (the reference's "ensemble"); empty = no pre-training head.
    vocab_sizes: tuple[int, ...] = ()
    codebook_temperature: float = 0.1
    head: HeadConfig | None = None
    input_rate_hz: int = 100
    gradient_checkpointing: bool = False
    # Whether the checkpoint has a learned mask embedding. The reference creates it only when
    # masking is configured; we always create it, but remember if the source lacked it.
    use_mask_embedding: bool = True

    def __post_init__(self) -> None:
        for name in ("conv_dim", "conv_kernel", "conv_stride", "vocab_sizes"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        if isinstance(self.head, dict):
            self.head = HeadConfig(**self.head)
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError("hidden_size must be divisible by num_conv_pos_embedding_groups")

    # Derived geometry -----------------------------------------------------------------------
    @property
    def total_stride(self) -> int:
        return total_stride(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.conv_kernel, self.conv_stride)

    def num_tokens(self, num_samples: int) -> int:
        """Number of tokens the conv stem makes from ``num_samples`` samples (0 if too short)."""
        return num_tokens(num_samples, self.conv_kernel, self.conv_stride)

    def token_mask(self, sample_mask: MaskT) -> MaskT:
        """Sample mask (B, L) -> token mask (B, T) for this stem (see :func:`token_mask_from_sample_mask`)."""
        return token_mask_from_sample_mask(sample_mask, self.conv_kernel, self.conv_stride)

    @property
    def window_samples(self) -> int:
        """Flattened input length of one 5 s, 12-lead window at the stem's rate."""
        return 12 * 5 * self.input_rate_hz

    # Serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def create_config(size: str = "small", *, input_rate_hz: int = 100, **overrides: Any) -> ModelConfig:
    """Config of a named size (``small``, ``base``, ``large``, ``tiny``) with the stem for ``input_rate_hz``.

    >>> create_config("small").num_tokens(6000)
    93
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    if input_rate_hz not in CONV_STEMS:
        raise ValueError(f"no conv stem for {input_rate_hz} Hz; choose one of {sorted(CONV_STEMS)}")
    values: dict[str, Any] = dict(MODEL_SIZES[size])
    stem = CONV_STEMS[input_rate_hz]
    values.update(conv_kernel=stem["conv_kernel"], conv_stride=stem["conv_stride"])
    conv_width = values.pop("conv_dim", (512,) * len(stem["conv_kernel"]))
    values["conv_dim"] = tuple([conv_width[0]] * len(stem["conv_kernel"]))
    values["input_rate_hz"] = input_rate_hz
    values.update(overrides)
    return ModelConfig(**values)


@dataclass
class CheckpointInfo:
    """What a saved model carries besides the network: preprocessing, task, labels, thresholds."""

    preprocessing: dict[str, Any] | None = None
    task: str | None = None
    label_names: list[str] = field(default_factory=list)
    thresholds: list[float] | None = None
    kmeans: list[str] = field(default_factory=list)  # k-means models that made the codebook targets
    source: str | None = None  # where the weights came from (converted file, training run)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CheckpointInfo:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: data.pop(k) for k in list(data) if k not in known}
        info = cls(**data)
        info.extra.update(extra)
        if info.task is not None and info.task not in TASKS:
            raise ValueError(f"unknown task {info.task!r}; choose one of {', '.join(TASKS)}")
        return info
