"""Masked-prediction pre-training: predict each masked token's k-means cluster id, per codebook.

Loss (reference doc §1.7): for each codebook i, cross-entropy of ``cosine(final_proj_i(h), codebook_i) / 0.1``
against the token's cluster id, averaged over masked tokens (weight ``alpha``) and over unmasked
valid tokens (weight ``1 - alpha``), summed over codebooks. Masks are drawn on the device from a
generator seeded by the optimizer step, for all the samples of that step (every micro-batch of every
process), and each micro-batch of each process takes its rows: the masks differ between micro-batches
and do not depend on the number of processes or on how the step is split into micro-batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import DistEnv, all_reduce_sum
from ..loader import StoreWindows
from ..model import HubertECG, sample_span_mask
from ..store import ECGStore

if TYPE_CHECKING:
    from ..training import TrainConfig, TrainResult


class MaskedPrediction(nn.Module):
    """Wraps the model so that DDP sees the codebook heads inside ``forward``."""

    def __init__(self, model: HubertECG) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, mask_time_indices: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        out = self.model(x, attention_mask, mask_time_indices=mask_time_indices)
        return self.model.codebook_logits(out.last_hidden_state), out.token_mask


def masked_prediction_loss(
    logits: Sequence[torch.Tensor],
    targets: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor | None,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over codebooks of alpha * CE(masked) + (1 - alpha) * CE(unmasked valid).

    ``logits``: per codebook (B, T, K_i); ``targets`` (B, E, T) int; ``mask``/``valid`` (B, T) bool.
    Stats: masked-token accuracy averaged over codebooks. No host sync.
    """
    valid = torch.ones_like(mask) if valid is None else valid
    masked = mask & valid
    unmasked = ~mask & valid
    total = logits[0].new_zeros(())
    correct = logits[0].new_zeros(())
    for i, lg in enumerate(logits):
        tgt = targets[:, i, :]
        ce = F.cross_entropy(lg.float().transpose(1, 2), tgt, reduction="none")  # (B, T)
        if alpha > 0:
            total = total + alpha * (ce * masked).sum() / masked.sum().clamp(min=1)
        if alpha < 1:
            total = total + (1 - alpha) * (ce * unmasked).sum() / unmasked.sum().clamp(min=1)
        hit = (lg.argmax(-1) == tgt) & masked
        correct = correct + hit.sum() / masked.sum().clamp(min=1)
    return total, {"masked_acc": correct / len(logits)}


@dataclass
class PretrainObjective:
    """Objective for :func:`hubert_ecg.training.train`."""

    model: HubertECG
    store: ECGStore
    target_names: list[str]
    rows: np.ndarray
    val_rows: np.ndarray
    global_batch: int
    alpha: float = 1.0
    seed: int = 0
    val_batch: int = 64
    max_val_rows: int | None = 10_000  # a seeded subset: validation must stay cheap on a large store
    lead_dropout: float = 0.0  # zero each input lead with this probability (>= 1 kept); targets stay 12-lead
    sharded_validation = True  # every rank validates its share (see validate)

    def __post_init__(self) -> None:
        sizes = [int(np.asarray(self.store.targets(n)).max()) + 1 for n in self.target_names]
        for name, k_needed, k_model in zip(self.target_names, sizes, self.model.config.vocab_sizes):
            if k_needed > k_model:
                raise ValueError(f"targets {name!r} use {k_needed} clusters but the codebook has {k_model}")
        if len(self.target_names) != len(self.model.config.vocab_sizes):
            raise ValueError(
                f"{len(self.target_names)} target sets but the model has {len(self.model.config.vocab_sizes)} codebooks"
            )
        if self.max_val_rows is not None and len(self.val_rows) > self.max_val_rows:
            pick = np.random.default_rng([self.seed, 7]).choice(len(self.val_rows), self.max_val_rows, replace=False)
            self.val_rows = np.asarray(self.val_rows)[np.sort(pick)]
        self.module = MaskedPrediction(self.model)
        self.dataset = StoreWindows(self.store, crop="first", targets=self.target_names, seed=self.seed)
        self.val_dataset = StoreWindows(self.store, crop="first", targets=self.target_names, seed=self.seed)

    def parameter_groups(self, model: HubertECG, lr: float) -> list[dict[str, Any]]:
        from ..runtime import param_groups

        return param_groups(model, lr)  # one LR for all layers; no decay on what no_weight_decay() names

    def _masks(
        self,
        batch: dict[str, torch.Tensor],
        key: int,
        offset: int,
        global_batch: int,
        token_mask: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        """Span masks for rows ``offset:offset + B`` of the ``global_batch`` samples drawn under ``key``."""
        config = self.model.config
        tokens = config.num_tokens(batch["input"].shape[1])
        # A seeded generator on the batch's device (masks never cross the bus); the meta device used
        # by placement tests has no generator, and its values are never read.
        generator = None if device.type == "meta" else torch.Generator(device=device)
        if generator is not None:
            generator.manual_seed(int(self.seed) * 1_000_003 + int(key))
        u = torch.rand((), device=device, generator=generator)
        scores = torch.rand(global_batch, tokens, device=device, generator=generator)
        scores = scores[offset : offset + len(batch["input"])]
        return sample_span_mask(
            len(batch["input"]),
            tokens,
            mask_prob=config.mask_time_prob,
            mask_length=config.mask_time_length,
            min_masks=config.mask_time_min_masks,
            token_mask=token_mask,
            scores=scores,
            u=u,
            device=device,
        )

    def _forward(
        self, module: nn.Module, batch: dict[str, torch.Tensor], key: int, offset: int, global_batch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        attention_mask = batch["attention_mask"]
        full = bool(batch.get("full", False))
        token_mask = None if full else self.model.token_mask(attention_mask)
        mask = self._masks(batch, key, offset, global_batch, token_mask, batch["input"].device)
        logits, _ = module(batch["input"], None if full else attention_mask, mask)
        return masked_prediction_loss(logits, batch["targets"], mask, token_mask, self.alpha)

    def training_loss(
        self, module: nn.Module, batch: dict[str, torch.Tensor], step: int, env: DistEnv, micro: int = 0, accum: int = 1
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of micro-batch ``micro`` (of ``accum``) of optimizer step ``step`` on this rank.

        The step's samples are numbered micro-batch by micro-batch, rank by rank within one
        (the order of the sampler's global batches), and sample j gets mask row j of the step's draw.
        """
        local = len(batch["input"])
        global_batch = local * env.world_size
        if self.lead_dropout > 0:
            from ..preprocess import apply_lead_dropout

            # The targets still describe all 12 leads: the model learns to infer what a missing lead held.
            rng = np.random.default_rng([int(self.seed), int(step), int(micro), int(env.rank), 11])
            batch = {**batch, "input": apply_lead_dropout(batch["input"], self.lead_dropout, rng)}
        return self._forward(
            module, batch, key=step, offset=micro * global_batch + env.rank * local, global_batch=global_batch * accum
        )

    @torch.no_grad()
    def validate(
        self, model: HubertECG, device: torch.device, autocast: Any, env: DistEnv | None = None
    ) -> dict[str, float]:
        """Masked loss and masked-token accuracy on the fixed validation rows, with fixed masks.

        Called on every rank: rank r scores batches r, r + world, ... and the sums are all-reduced,
        so the result is the same for any number of processes and no rank idles in a collective.
        """
        env = env or DistEnv()
        module = MaskedPrediction(model)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, accuracy * n, n
        for i, start in enumerate(range(0, len(self.val_rows), self.val_batch)):
            if i % env.world_size != env.rank:
                continue
            rows = self.val_rows[start : start + self.val_batch]
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.val_dataset[(i, rows)].items()}
            with autocast():
                loss, stats = self._forward(module, batch, key=10**9 + i, offset=0, global_batch=len(rows))
            sums += torch.stack(
                [
                    loss.double() * len(rows),
                    stats["masked_acc"].double() * len(rows),
                    torch.tensor(float(len(rows)), dtype=torch.float64, device=device),
                ]
            )
        loss_sum, acc_sum, n = all_reduce_sum(sums, env).tolist()
        return {"val_loss": loss_sum / max(n, 1.0), "val_masked_acc": acc_sum / max(n, 1.0)}


def majority_baseline(store: ECGStore, target_name: str, rows: np.ndarray, train_rows: np.ndarray) -> float:
    """Accuracy of always predicting the training set's most frequent cluster (a floor for masked accuracy)."""
    targets = store.targets(target_name)
    counts = np.bincount(np.asarray(targets[np.sort(train_rows)]).ravel())
    majority = int(counts.argmax())
    return float((np.asarray(targets[np.sort(rows)]) == majority).mean())


def default_val_rows(store: ECGStore, split: str, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): the store's splits when present, else a fixed seeded fraction."""
    train_rows = store.rows("train")
    val_rows = store.rows(split) if split else np.array([], dtype=np.int64)
    if len(train_rows) and len(val_rows):
        return train_rows, val_rows
    rows = store.rows()
    rng = np.random.default_rng(seed)
    is_val = rng.random(len(rows)) < fraction
    if not is_val.any():
        is_val[rng.integers(len(rows))] = True
    if is_val.all():
        is_val[0] = False
    return rows[~is_val], rows[is_val]


@dataclass
class PretrainRun:
    """What to pre-train, on what, from where: the ``run`` section of a pre-training ``run.json``.

    The keyword arguments of :func:`run_pretrain` (``store`` and ``targets`` are its first two arguments).
    """

    store: str | None = None
    targets: list[str] | None = None
    size: str = "small"
    init_from: str | None = None
    alpha: float = 1.0
    mask_prob: float | None = None
    mask_length: int | None = None
    val_split: str = "val"
    val_fraction: float = 0.05
    model_overrides: dict[str, Any] | None = None
    lead_dropout: float = 0.0

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`run_pretrain` (all fields but ``store`` and ``targets``)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("store", "targets")}


def pretrain_settings(run: PretrainRun, cfg: TrainConfig) -> dict[str, Any]:
    """The ``settings`` of a pre-training ``run.json`` (what ``--print-config`` prints, ``--config`` reads)."""
    from ..runs import to_jsonable

    return {"run": to_jsonable(run), "train": to_jsonable(cfg)}


def _targets_fingerprint(store: ECGStore, name: str) -> dict[str, Any]:
    import json

    path = store.targets_path(name)
    meta_file = path.with_suffix(".json")
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return {
        "kmeans_sha256": meta.get("kmeans_sha256"),
        "k": meta.get("k"),
        "rows": meta.get("n_rows"),
        "bytes": path.stat().st_size if path.exists() else None,
    }


def run_pretrain(
    store_path: str,
    targets: Sequence[str],
    cfg: TrainConfig,
    *,
    size: str = "small",
    init_from: str | None = None,
    alpha: float = 1.0,
    mask_prob: float | None = None,
    mask_length: int | None = None,
    val_split: str = "val",
    val_fraction: float = 0.05,
    model_overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    command: list[str] | None = None,
    lead_dropout: float = 0.0,
) -> TrainResult:
    """Masked-prediction pre-training on a store with k-means targets (see ``hubert-ecg pretrain``).

    ``init_from`` starts iteration n+1 from iteration n: all encoder weights are kept, the codebooks
    are fresh (sized by the new targets). ``cfg.out_dir`` gets a ``run.json``; ``overwrite``/``resume``
    as in :func:`hubert_ecg.finetune.run_finetune`.
    """
    from ..training import train

    store = ECGStore(store_path)
    targets = list(targets)
    if cfg.monitor == "val_loss":
        cfg.monitor_mode = "min"
    run = PretrainRun(
        store_path,
        targets,
        size,
        init_from,
        alpha,
        mask_prob,
        mask_length,
        val_split,
        val_fraction,
        model_overrides,
        lead_dropout,
    )
    _begin_pretrain_run(store, run, cfg, overwrite=overwrite, resume=resume, command=command)
    model = _model_to_pretrain(store, run, cfg.seed)
    train_rows, val_rows = default_val_rows(store, val_split, val_fraction, cfg.seed)
    objective = PretrainObjective(
        model,
        store,
        targets,
        train_rows,
        val_rows,
        global_batch=cfg.batch_size,
        alpha=alpha,
        seed=cfg.seed,
        lead_dropout=lead_dropout,
    )
    return train(model, objective, cfg)


def _begin_pretrain_run(
    store: ECGStore, run: PretrainRun, cfg: TrainConfig, *, overwrite: bool, resume: bool, command: list[str] | None
) -> None:
    """Start (or resume) the run record in ``cfg.out_dir``; the targets' fingerprints are among its inputs."""
    from pathlib import Path

    from ..runs import begin_training_run

    init_path = Path(run.init_from).expanduser() if run.init_from else None
    # run.json records absolute paths: the run then compares equal from any folder.
    recorded = dataclasses.replace(
        run,
        store=str(Path(store.path).resolve()),
        init_from=str(init_path.resolve()) if init_path is not None and init_path.exists() else run.init_from,
    )
    begin_training_run(
        cfg.out_dir,
        cfg.device,
        "pretrain",
        pretrain_settings(recorded, cfg),
        store=store,
        init=run.init_from,
        extra_inputs={"targets": {n: _targets_fingerprint(store, n) for n in run.targets or []}},
        overwrite=overwrite,
        resume=resume,
        command=command,
    )


def _codebooks(store: ECGStore, targets: Sequence[str]) -> tuple[list[int], list[str]]:
    """(codebook size, k-means model reference) of each target set."""
    import json

    vocab_sizes = []
    kmeans_refs = []
    for name in targets:
        meta_file = store.targets_path(name).with_suffix(".json")
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        k = meta.get("k") or int(np.asarray(store.targets(name)).max()) + 1
        vocab_sizes.append(int(k))
        kmeans_refs.append(meta.get("kmeans", str(store.targets_path(name))))
    return vocab_sizes, kmeans_refs


def _model_to_pretrain(store: ECGStore, run: PretrainRun, seed: int) -> HubertECG:
    """A fresh ``run.size`` model, or ``run.init_from`` with fresh codebooks, sized by the targets."""
    from ..checkpoint import load_model
    from ..model import create_model

    vocab_sizes, kmeans_refs = _codebooks(store, run.targets or [])
    overrides = dict(run.model_overrides or {})
    if run.mask_prob is not None:
        overrides["mask_time_prob"] = run.mask_prob
    if run.mask_length is not None:
        overrides["mask_time_length"] = run.mask_length
    # Random weights (a fresh model, new codebooks) must come from --seed, not from the process: the same
    # command then gives the same model, and a killed run re-creates what it saved before resuming.
    torch.manual_seed(seed)
    if run.init_from:
        model = load_model(run.init_from)
        model.set_head(None, drop_codebooks=False)
        model.set_codebooks(vocab_sizes)
        if overrides:
            model.update_config(**overrides)
    else:
        rate = int(round(store.fs))
        model = create_model(run.size, input_rate_hz=rate, vocab_sizes=vocab_sizes, **overrides)
    model.info.preprocessing = store.spec.to_dict()
    model.info.kmeans = kmeans_refs
    model.info.source = f"pre-trained on {store.path}" + (f" from {run.init_from}" if run.init_from else "")
    return model
