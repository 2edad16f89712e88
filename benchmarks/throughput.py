"""Throughput of our HuBERT-ECG against transformers' HubertModel holding the same weights, side by side.

Usage::

    python benchmarks/throughput.py                       # all sizes, CUDA if present
    python benchmarks/throughput.py --quick               # CPU smoke: small, batch 16, a few steps (< 3 min)
    python benchmarks/throughput.py --sizes small --compile --steps 20

Three workloads per size, each timed for our model and for the reference in one process:

* inference: forward pass, ``torch.inference_mode``;
* fine-tune step: mean pool -> Linear -> BCE-with-logits, backward, AdamW step;
* pre-train step: span masking (ours on device; the reference through transformers'
  ``_compute_mask_indices`` in NumPy, as it ships) -> codebook logits (cosine / 0.1) -> CE on masked tokens.

Two comparisons:

* **as shipped**: the reference as its recipes run it (fp16 autocast + GradScaler on CUDA, float32
  on CPU; eager; inference batch 256, fine-tune and pre-train batch 64) against our defaults
  (bf16 autocast where the hardware has it natively: CUDA or AMX/AVX512-BF16 CPUs; fused AdamW on
  CUDA; ``--compile`` adds torch.compile);
* **like for like**: the same batch, dtype and compile setting for both.

On CUDA it also reports model FLOP utilisation (MFU) against the device's dense bf16 peak and
the peak GPU memory of our step alone (measured in a separate pass with the reference and the spare
copy of our weights moved to the CPU). FLOPs are counted analytically (see :func:`forward_flops`);
layerdrop is 0 on both sides, so no layer's FLOPs are skipped and MFU is not inflated.
A dated section is appended to ``--results`` (default ``benchmarks/RESULTS.md``; ``--no-write`` to skip);
``--json PATH`` also writes every row as JSON (used by ``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # hf_config_dict: the reference settings, shared with the tests

from hubert_ecg import checkpoint  # noqa: E402
from hubert_ecg.config import HeadConfig, ModelConfig, create_config  # noqa: E402
from hubert_ecg.fast_inference import TOLERANCES, cpu_has_native_bf16, optimise_for_inference  # noqa: E402
from hubert_ecg.model import HubertECG  # noqa: E402

NUM_LABELS = 5  # fine-tune head width (the reference's PTB-XL tasks have 5 to 71 labels)
VOCAB = 100  # one codebook of 100 clusters, as in the first pre-training iteration
SAMPLES = 6000  # 5 s x 12 leads at 100 Hz

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring; first match wins.
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("T4", 65.0),
    ("V100", 125.0),
)


# ---------------------------------------------------------------------------------------------
# FLOPs (multiply-add = 2 FLOPs), per ECG of T tokens
# ---------------------------------------------------------------------------------------------
def forward_flops(config: ModelConfig, samples: int = SAMPLES) -> dict[str, float]:
    """Analytic forward FLOPs of one window, by part.

    conv stem:   sum_i 2 * C_in_i * C_out_i * k_i * T_i           (T_i = frames out of conv i)
    projection:  2 * T * C * H
    pos conv:    2 * T * H * (H / G) * K                          (grouped conv, K = 128, G = 16)
    layers:      N * (T * (8 H^2 + 4 H F) + 4 T^2 H)              (QKV+out, FFN, QK^T and AV)
    Norms, GELU and softmax are left out (a few % of the total, and not tensor-core work).
    """
    frames, c_in, stem = samples, 1, 0.0
    for c_out, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        frames = (frames - k) // s + 1
        stem += 2 * c_in * c_out * k * frames
        c_in = c_out
    t, h, f = frames, config.hidden_size, config.intermediate_size
    projection = 2 * t * c_in * h
    pos_conv = 2 * t * h * (h // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings
    layers = config.num_hidden_layers * (t * (8 * h * h + 4 * h * f) + 4 * t * t * h)
    return {
        "stem": stem,
        "projection": projection,
        "pos_conv": pos_conv,
        "layers": layers,
        "total": stem + projection + pos_conv + layers,
    }


def train_flops(config: ModelConfig) -> float:
    """Training step FLOPs per ECG: forward + backward (2x forward); recomputation not counted."""
    return 3 * forward_flops(config)["total"]


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak * 1e12 for key, peak in BF16_PEAK_TFLOPS if key in name), None)


# ---------------------------------------------------------------------------------------------
# Models with identical weights
# ---------------------------------------------------------------------------------------------
def build_pair(size: str, seed: int = 0) -> tuple[nn.Module, HubertECG, ModelConfig]:
    """transformers.HubertModel (SDPA attention, as the measured baseline) and ours with its weights."""
    import transformers

    from hf_reference import hf_config_dict

    # layerdrop 0 on both sides: skipped layers would make MFU (counted for every layer) read ~7% high.
    config = create_config(size, layerdrop=0.0)
    torch.manual_seed(seed)
    hf_cfg = {
        k: v for k, v in hf_config_dict(config).items() if k not in ("model_type", "vocab_sizes", "ensemble_length")
    }
    reference = transformers.HubertModel(transformers.HubertConfig(**hf_cfg, attn_implementation="sdpa"))
    ours = checkpoint.build_from_state(config, checkpoint.normalise_state_dict(reference.state_dict()), "hf")
    return reference, ours, config


class ReferenceClassifier(nn.Module):
    """The reference fine-tune model: HubertModel -> mean over tokens -> dropout -> Linear."""

    def __init__(self, encoder: nn.Module, hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(hidden, NUM_LABELS)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.encoder(x).last_hidden_state.mean(1)))


class ReferencePretrain(nn.Module):
    """The reference pre-train head: HubertModel(mask_time_indices) -> Linear -> cosine to codebook / 0.1."""

    def __init__(self, encoder: nn.Module, hidden: int, proj: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.final_proj = nn.Linear(hidden, proj)
        self.label_embedding = nn.Embedding(VOCAB, proj)

    def forward(self, x: Tensor, mask_time_indices: Tensor) -> Tensor:
        hidden = self.encoder(x, mask_time_indices=mask_time_indices).last_hidden_state
        z = self.final_proj(hidden)
        cos = F.cosine_similarity(z.unsqueeze(-2), self.label_embedding.weight.to(z.dtype), dim=-1)
        return cos / 0.1


# ---------------------------------------------------------------------------------------------
# Settings and timing
# ---------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """How one side runs: batch, autocast dtype (None = float32), compile, fused AdamW, GradScaler."""

    batch: int
    dtype: torch.dtype | None
    compile: bool = False
    fused_adam: bool = False
    grad_scaler: bool = False
    checkpointing: bool = False

    def label(self) -> str:
        dtype = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return f"b{self.batch} {dtype}{' compiled' if self.compile else ''}{' ckpt' if self.checkpointing else ''}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per step over ``steps`` steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def compare(
    steps_by_side: dict[str, Callable[[], None]],
    batches: dict[str, int],
    device: torch.device,
    steps: int,
    warmup: int,
    rounds: int,
) -> dict[str, float]:
    """ECG/s per side, best of ``rounds`` interleaved rounds (shared CPUs are noisy: interleaving
    exposes both sides to the same background load, and the best round is the least disturbed)."""
    best = {side: 0.0 for side in steps_by_side}
    for round_ in range(rounds):
        for side, step in steps_by_side.items():
            seconds = timed(step, device, steps, warmup if round_ == 0 else 0)
            best[side] = max(best[side], batches[side] / seconds)
    return best


# ---------------------------------------------------------------------------------------------
# Workloads: each returns a zero-argument step closure
# ---------------------------------------------------------------------------------------------
def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _optimizer(params, device: torch.device, fused: bool) -> torch.optim.Optimizer:
    if fused and device.type == "cuda":
        return torch.optim.AdamW(params, lr=1e-5, fused=True)
    return torch.optim.AdamW(params, lr=1e-5)  # torch's default (foreach) implementation


def inference_step(model: nn.Module, x: Tensor, device: torch.device, setting: Setting) -> Callable[[], None]:
    model = model.eval()
    fn = torch.compile(model) if setting.compile else model

    def step() -> None:
        with torch.inference_mode(), _autocast(device, setting.dtype):
            fn(x)

    return step


def _train_step(
    model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], device: torch.device, setting: Setting
) -> Callable[[], None]:
    model.train()
    optimizer = _optimizer(model.parameters(), device, setting.fused_adam)
    scaler = torch.amp.GradScaler(device.type, enabled=setting.grad_scaler and device.type == "cuda")
    fn = torch.compile(model) if setting.compile else model

    def step() -> None:
        with _autocast(device, setting.dtype):
            loss = loss_fn(fn)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def finetune_steps(
    reference: nn.Module,
    ours: HubertECG,
    config: ModelConfig,
    device: torch.device,
    ref_setting: Setting,
    our_setting: Setting,
) -> dict[str, Callable[[], None]]:
    ref_model = ReferenceClassifier(reference, config.hidden_size).to(device)
    our_model = HubertECG(ours.config.replace(gradient_checkpointing=our_setting.checkpointing))
    our_model.load_state_dict(ours.state_dict())
    our_model.set_head(HeadConfig(NUM_LABELS))
    our_model.classifier.load_state_dict(ref_model.classifier.state_dict())
    our_model.to(device)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def data(batch: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(batch, SAMPLES, generator=gen).to(device)
        y = (torch.rand(batch, NUM_LABELS, generator=gen) < 0.3).float().to(device)
        return x, y

    xr, yr = data(ref_setting.batch)
    xo, yo = data(our_setting.batch)
    return {
        "reference": _train_step(
            ref_model, lambda m: F.binary_cross_entropy_with_logits(m(xr).float(), yr), device, ref_setting
        ),
        "ours": _train_step(
            our_model, lambda m: F.binary_cross_entropy_with_logits(m(xo).logits.float(), yo), device, our_setting
        ),
    }


def pretrain_steps(
    reference: nn.Module,
    ours: HubertECG,
    config: ModelConfig,
    device: torch.device,
    ref_setting: Setting,
    our_setting: Setting,
) -> dict[str, Callable[[], None]]:
    from transformers.models.hubert.modeling_hubert import _compute_mask_indices

    ref_model = ReferencePretrain(reference, config.hidden_size, config.classifier_proj_size).to(device)
    our_model = HubertECG(ours.config.replace(vocab_sizes=(VOCAB,), gradient_checkpointing=our_setting.checkpointing))
    state = ours.state_dict()
    state.update({f"final_proj.0.{k}": v for k, v in ref_model.final_proj.state_dict().items()})
    state["label_embedding.0.weight"] = ref_model.label_embedding.weight.detach().clone()
    our_model.load_state_dict(state, strict=False)
    our_model.to(device)
    tokens = config.num_tokens(SAMPLES)
    gen = torch.Generator(device="cpu").manual_seed(0)
    xr = torch.randn(ref_setting.batch, SAMPLES, generator=gen).to(device)
    xo = torch.randn(our_setting.batch, SAMPLES, generator=gen).to(device)
    yr = torch.randint(0, VOCAB, (ref_setting.batch, tokens), generator=gen).to(device)
    yo = torch.randint(0, VOCAB, (our_setting.batch, tokens), generator=gen).to(device)

    def reference_loss(model: nn.Module) -> Tensor:
        # As the reference does it: NumPy mask per step, copied to the device (a host sync).
        mask = _compute_mask_indices(
            (ref_setting.batch, tokens),
            config.mask_time_prob,
            config.mask_time_length,
            min_masks=config.mask_time_min_masks,
        )
        mask = torch.from_numpy(mask).to(device)
        logits = model(xr, mask)
        return F.cross_entropy(logits[mask].float(), yr[mask])

    def our_loss(model: nn.Module) -> Tensor:
        out = model(xo, apply_mask=True)  # mask sampled on the device, no sync
        logits = our_model.codebook_logits(out.last_hidden_state)[0]
        # Boolean indexing would sync; weight the per-token loss by the mask instead.
        per_token = F.cross_entropy(logits.float().transpose(1, 2), yo, reduction="none")
        weights = out.mask_time_indices.float()
        return (per_token * weights).sum() / weights.sum()

    return {
        "reference": _train_step(ref_model, reference_loss, device, ref_setting),
        "ours": _train_step(our_model, our_loss, device, our_setting),
    }


# ---------------------------------------------------------------------------------------------
# CPU fast-inference modes and their accuracy cost
# ---------------------------------------------------------------------------------------------
def cpu_modes(
    reference: nn.Module, ours: HubertECG, batch: int, steps: int, rounds: int, with_compile: bool
) -> list[dict]:
    """ECG/s of each fast_inference mode against the reference (float32 eager) on CPU."""
    device = torch.device("cpu")
    x = torch.randn(batch, SAMPLES, generator=torch.Generator().manual_seed(1))
    modes = (
        ["eager", "int8", "onnx"] + (["bf16"] if cpu_has_native_bf16() else []) + (["compile"] if with_compile else [])
    )
    with torch.inference_mode():
        expected = ours.eval()(x).last_hidden_state
    runners: dict[str, Callable[[], None]] = {"reference": inference_step(reference, x, device, Setting(batch, None))}
    errors: dict[str, float] = {}
    for mode in modes:
        run = optimise_for_inference(ours, device, mode)
        errors[mode] = float((run(x).last_hidden_state - expected).abs().max())
        runners[mode] = lambda run=run: run(x)
    speeds = compare(runners, {k: batch for k in runners}, device, steps, 1, rounds)
    return [
        {
            "mode": mode,
            "ecg_s": speeds[mode],
            "ratio": speeds[mode] / speeds["reference"],
            "max_abs_hidden": errors.get(mode, float("nan")),
            "tolerance": TOLERANCES.get(mode, (0.0, 0.0))[0],
        }
        for mode in ["reference", *modes]
    ]


def ludb_accuracy_cost(ours: HubertECG, ludb: Path, modes: list[str]) -> list[dict] | None:
    """Sinus rhythm vs other on LUDB (200 records): a logistic probe fitted on float32 embeddings of
    the frozen encoder, applied to each mode's embeddings. Returns AUROC and max probability
    difference per mode, from 5-fold out-of-fold predictions."""
    if not (ludb / "ludb.csv").exists():
        return None
    import pandas as pd
    import wfdb
    from scipy.signal import resample_poly
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    table = pd.read_csv(ludb / "ludb.csv")
    labels = np.array([str(r).strip().splitlines()[0] == "Sinus rhythm" for r in table["Rhythms"]], dtype=int)
    windows = []
    for record_id in table["ID"]:
        signal = wfdb.rdrecord(str(ludb / "data" / str(record_id))).p_signal  # (5000, 12) at 500 Hz, mV
        signal = resample_poly(signal, 1, 5, axis=0)[:500]  # first 5 s at 100 Hz
        signal = (signal - signal.mean(0)) / (signal.std(0) + 1e-6)  # per-lead z-score
        windows.append(signal.T.reshape(-1).astype(np.float32))  # leads end to end
    x = torch.from_numpy(np.stack(windows))
    embeddings = {}
    for mode in ["eager", *modes]:
        run = optimise_for_inference(ours, "cpu", mode)
        embeddings[mode] = torch.cat([run(chunk).last_hidden_state.mean(1) for chunk in x.split(32)]).numpy()
    probs = {mode: np.zeros(len(labels)) for mode in embeddings}
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(embeddings["eager"], labels):
        probe = LogisticRegression(max_iter=2000, C=1.0).fit(embeddings["eager"][train], labels[train])
        for mode, emb in embeddings.items():
            probs[mode][test] = probe.predict_proba(emb[test])[:, 1]
    base = roc_auc_score(labels, probs["eager"])
    return [
        {
            "mode": mode,
            "auroc": roc_auc_score(labels, p),
            "auroc_diff": roc_auc_score(labels, p) - base,
            "max_prob_diff": float(np.abs(p - probs["eager"]).max()),
        }
        for mode, p in probs.items()
    ]


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["small", "base", "large"], choices=["small", "base", "large", "tiny"]
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--infer-batch", type=int, default=256, help="reference recipe: 256")
    parser.add_argument("--train-batch", type=int, default=64, help="reference recipe: 64 (fine-tune and pre-train)")
    parser.add_argument(
        "--our-infer-batch", type=int, default=None, help="our inference batch (default: --infer-batch)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps (default: --steps)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best counts")
    parser.add_argument("--compile", action="store_true", help="torch.compile ours (and both, like for like)")
    parser.add_argument(
        "--workloads",
        nargs="+",
        default=["inference", "finetune", "pretrain"],
        choices=["inference", "finetune", "pretrain"],
    )
    parser.add_argument("--cpu-modes", action="store_true", help="also time every fast_inference mode (CPU)")
    parser.add_argument(
        "--ludb",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "ludb",
        help="LUDB folder for the AUROC cost of the lossy CPU modes (skipped if absent)",
    )
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: small, batch 16, few steps, CPU modes")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--json", type=Path, default=None, help="also write every measured row to this JSON file")
    parser.add_argument(
        "--memory-batch",
        type=int,
        default=None,
        help="batch of the checkpointed peak-memory row on CUDA (default: --train-batch)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        # A CPU training step of small takes seconds: time few of them, at batch 8.
        args.sizes, args.infer_batch, args.train_batch = ["small"], 16, 8
        args.steps, args.train_steps, args.warmup, args.rounds, args.cpu_modes = 3, 1, 1, 2, True
    args.train_steps = args.train_steps or args.steps
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hubert_ecg.runtime import precision_dtype, resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    # Our default: bf16 where native (compute capability >= 8.0, AMX CPUs), fp16 on older GPUs.
    ours_dtype = precision_dtype("auto", device) if cuda else (torch.bfloat16 if cpu_has_native_bf16() else None)
    # The reference ships fp16 autocast + GradScaler on CUDA, float32 on CPU.
    ref_shipped = dict(dtype=torch.float16 if cuda else None, grad_scaler=cuda)
    like_dtype = torch.bfloat16 if cuda else None  # on CPU like for like is float32 (the reference's CPU mode)
    peak = bf16_peak(device)
    lines: list[str] = []
    records: list[dict] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    device_name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    if not cuda:
        try:
            device_name = next(
                line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
            )
        except (OSError, StopIteration):
            pass
        device_name += f", {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}"
    import transformers

    emit(f"## {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} · {device.type.upper()} · {device_name}")
    emit()
    emit(
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}; "
        f"command: `python benchmarks/throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}`; "
        f"{args.steps} timed inference / {args.train_steps} training steps x best of {args.rounds} interleaved "
        f"rounds (the machine's load average at start: {_load()})."
    )
    if not cuda:
        emit("No GPU was used: CPU figures only.")
    emit()
    emit(
        "| size | workload | comparison | reference | ours | reference ECG/s | ours ECG/s | ratio |"
        + (" MFU ours | peak mem ours (GiB) |" if cuda else "")
    )
    emit("|---|---|---|---|---|---|---|---|" + ("---|---|" if cuda else ""))

    for size in args.sizes:
        reference, ours, config = build_pair(size)
        reference.to(device)
        ours.to(device)
        flops = forward_flops(config)
        our_infer_batch = args.our_infer_batch or args.infer_batch
        comparisons = {
            "as shipped": (
                dict(
                    inference=Setting(args.infer_batch, ref_shipped["dtype"]),
                    train=Setting(args.train_batch, **ref_shipped),
                ),
                dict(
                    inference=Setting(our_infer_batch, ours_dtype, compile=args.compile),
                    train=Setting(args.train_batch, ours_dtype, compile=args.compile, fused_adam=True),
                ),
            ),
            "like for like": (
                dict(
                    inference=Setting(our_infer_batch, like_dtype, compile=args.compile),
                    train=Setting(args.train_batch, like_dtype, compile=args.compile, fused_adam=True),
                ),
                dict(
                    inference=Setting(our_infer_batch, like_dtype, compile=args.compile),
                    train=Setting(args.train_batch, like_dtype, compile=args.compile, fused_adam=True),
                ),
            ),
        }
        for workload in args.workloads:
            for name, (ref_set, our_set) in comparisons.items():
                key = "inference" if workload == "inference" else "train"
                rs, os_ = ref_set[key], our_set[key]
                if cuda:
                    torch.cuda.empty_cache()
                if workload == "inference":
                    x_ref = torch.randn(rs.batch, SAMPLES, device=device)
                    x_our = torch.randn(os_.batch, SAMPLES, device=device)
                    steps = {
                        "reference": inference_step(reference, x_ref, device, rs),
                        "ours": inference_step(ours, x_our, device, os_),
                    }
                elif workload == "finetune":
                    steps = finetune_steps(reference, ours, config, device, rs, os_)
                else:
                    steps = pretrain_steps(reference, ours, config, device, rs, os_)
                n_steps = args.steps if workload == "inference" else args.train_steps
                speeds = compare(
                    steps, {"reference": rs.batch, "ours": os_.batch}, device, n_steps, args.warmup, args.rounds
                )
                row = (
                    f"| {size} | {workload} | {name} | {rs.label()} | {os_.label()} | {speeds['reference']:,.1f} | "
                    f"{speeds['ours']:,.1f} | {speeds['ours'] / speeds['reference']:.2f}x |"
                )
                record = dict(
                    size=size,
                    workload=workload,
                    comparison=name,
                    reference=rs.label(),
                    ours=os_.label(),
                    reference_ecg_s=speeds["reference"],
                    ours_ecg_s=speeds["ours"],
                    ratio=speeds["ours"] / speeds["reference"],
                )
                del steps
                if cuda:
                    per_ecg = flops["total"] if workload == "inference" else 3 * flops["total"]
                    record["mfu"] = speeds["ours"] * per_ecg / peak if peak else None
                    mfu = f"{record['mfu']:.1%}" if peak else "n/a"
                    record["peak_gib_ours"] = our_peak_memory(workload, reference, ours, config, device, os_)
                    row += f" {mfu} | {record['peak_gib_ours']:.1f} |"
                emit(row)
                records.append(record)
        if cuda and "finetune" in args.workloads:
            batch = args.memory_batch or args.train_batch
            setting = Setting(batch, ours_dtype, fused_adam=True, checkpointing=True)
            gib = our_peak_memory("finetune", reference, ours, config, device, setting, steps=3)
            records.append(
                dict(
                    size=size,
                    workload="finetune",
                    comparison="peak memory, gradient checkpointing",
                    ours=setting.label(),
                    peak_gib_ours=gib,
                    fits_16gb=gib <= 16,
                )
            )
            emit(
                f"\nPeak memory, {size} fine-tune step at batch {batch} with gradient checkpointing "
                f"({setting.label()}, ours alone): {gib:.2f} GiB ({'fits' if gib <= 16 else 'does NOT fit'} 16 GB).\n"
            )
        if args.cpu_modes and not cuda:
            emit()
            emit(f"CPU inference modes, {size}, batch {args.infer_batch}, against the reference (float32 eager):")
            emit()
            emit(
                "| mode | ECG/s | vs reference | max abs diff of last_hidden_state vs our float32 | stated tolerance |"
            )
            emit("|---|---|---|---|---|")
            for r in cpu_modes(reference, ours, args.infer_batch, args.steps, args.rounds, args.compile):
                emit(
                    f"| {r['mode']} | {r['ecg_s']:,.1f} | {r['ratio']:.2f}x | {r['max_abs_hidden']:.3g} "
                    f"| {r['tolerance']:g} |"
                )
            lossy = ["int8"] + (["bf16"] if cpu_has_native_bf16() else [])
            rows = ludb_accuracy_cost(ours, args.ludb, lossy)
            if rows:
                emit()
                emit(
                    f"Accuracy cost on LUDB (sinus rhythm vs other, n=200; logistic probe on the frozen, randomly "
                    f"initialised {size} encoder, fitted on float32 embeddings, 5-fold out-of-fold):"
                )
                emit()
                emit("| mode | AUROC | AUROC - float32 | max probability diff vs float32 |")
                emit("|---|---|---|---|")
                for r in rows:
                    emit(f"| {r['mode']} | {r['auroc']:.4f} | {r['auroc_diff']:+.4f} | {r['max_prob_diff']:.4f} |")
        emit()
        emit(
            f"FLOPs per 5 s ECG ({size}): forward {flops['total'] / 1e9:.2f} G (stem {flops['stem'] / 1e9:.2f}, "
            f"transformer {(flops['total'] - flops['stem']) / 1e9:.2f}); training step 3x forward."
            + (f" Device bf16 peak used for MFU: {peak / 1e12:.0f} TFLOP/s." if peak else "")
        )
        emit()
        del reference, ours
    if not args.no_write:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        header = "" if args.results.exists() else RESULTS_HEADER
        with open(args.results, "a") as f:
            f.write(header + "\n".join(lines) + "\n\n")
        print(f"appended to {args.results}")
    if args.json is not None:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"device": device_name, "torch": torch.__version__, "rows": records}, indent=1) + "\n"
        )
    return 0


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "n/a"


def our_peak_memory(
    workload: str,
    reference: nn.Module,
    ours: HubertECG,
    config: ModelConfig,
    device: torch.device,
    setting: Setting,
    steps: int = 2,
) -> float:
    """Peak GiB of our step alone: the reference and our spare weights sit on the CPU meanwhile, so
    the figure is what a user of our model needs (weights, gradients, AdamW states, activations)."""
    reference.cpu()
    ours.cpu()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    if workload == "inference":
        ours.to(device)
        step = inference_step(ours, torch.randn(setting.batch, SAMPLES, device=device), device, setting)
    else:
        build = finetune_steps if workload == "finetune" else pretrain_steps
        step = build(nn.Identity(), ours, config, device, setting, setting)["ours"]  # reference side never run
    timed(step, device, steps, 1)
    gib = torch.cuda.max_memory_allocated(device) / 2**30
    del step
    torch.cuda.empty_cache()
    reference.to(device)
    ours.to(device)
    return gib


RESULTS_HEADER = """# Throughput results

Appended by `benchmarks/throughput.py`; every table below was printed by that script (never edited
by hand); figures in the "Notes" paragraphs say where they came from. Reference = transformers' `HubertModel`
with the same weights. ECG = one 5 s, 12-lead window at 100 Hz (6000 samples, 93 tokens).

"""

if __name__ == "__main__":
    raise SystemExit(main())
