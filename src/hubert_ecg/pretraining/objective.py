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
        # Padded tokens take no part whatever they hold: their target may be any id (even outside
        # [0, K)) and their logits anything (even NaN); selecting with `where`, not multiplying by 0,
        # keeps a NaN there out of the sum and of the gradient.
        tgt = torch.where(valid, targets[:, i, :], torch.zeros_like(targets[:, i, :]))
        lg = torch.where(valid.unsqueeze(-1), lg.float(), 0.0)
        ce = F.cross_entropy(lg.transpose(1, 2), tgt, reduction="none")  # (B, T)
        if alpha > 0:
            total = total + alpha * torch.where(masked, ce, 0.0).sum() / masked.sum().clamp(min=1)
        if alpha < 1:
            total = total + (1 - alpha) * torch.where(unmasked, ce, 0.0).sum() / unmasked.sum().clamp(min=1)
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
        config = self.model.config
        _check_masking(self.alpha, config.mask_time_prob, config.mask_time_min_masks)
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
        order = None
        if token_mask is not None and device.type != "meta":
            # A short row is padded at the end of *every lead*, so its valid tokens are not a prefix of the
            # flattened sequence; sample_span_mask only starts spans before position (n valid - length) and
            # would never mask the last leads. Masks are drawn with the valid tokens moved to the front (in
            # order, each keeping its own score) and moved back: every valid token has the same chance.
            order = torch.argsort((~token_mask).to(torch.int32), dim=-1, stable=True)
            scores = scores.gather(1, order)
            token_mask = torch.arange(tokens, device=device) < token_mask.sum(-1, keepdim=True)
        mask = sample_span_mask(
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
        if order is None:
            return mask
        return torch.zeros_like(mask).scatter(1, order, mask)

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


def check_targets(store: ECGStore, name: str, n_tokens: int | None, k: int | None) -> None:
    """Refuse targets that cannot be this store's labels for a ``k``-entry codebook (one line, names the file).

    Pre-training indexes the targets by store row and token: a file of another length or token count
    (another store, a store that gained rows, a truncated copy) would train on other ECGs' labels or fail
    mid-run; an id outside ``[0, k)`` (another K) has no codebook entry. ``{name}.json``, when present,
    must also describe this store (row count and manifest checksum). ``n_tokens`` / ``k`` None: not checked.
    """
    import json

    from ..runs import store_fingerprint

    path = store.targets_path(name)
    if not path.exists():
        several = sorted(f.stem for f in path.parent.glob(f"{name}-*.npy") if f.stem[len(name) + 1 :].isdigit())
        hint = f" (labelling with several k-means models wrote {', '.join(several)}: pass those)" if several else ""
        raise ValueError(f"{store.path}: no targets named {name!r}{hint}; create them with `hubert-ecg label`")
    try:
        targets = store.targets(name)
    except (OSError, ValueError) as err:  # truncated or not a .npy file
        raise ValueError(f"{path}: unreadable targets ({err}); label the store again") from None
    expected = (len(store), targets.shape[-1] if n_tokens is None else n_tokens)
    if targets.ndim != 2 or tuple(targets.shape) != expected:
        raise ValueError(
            f"{path}: targets of shape {tuple(targets.shape)} but the store needs {expected} "
            "(rows x tokens); they were made for another store or before it changed: label it again"
        )
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"{path}: targets must be integer cluster ids, got {targets.dtype}")
    low, high = _id_range(targets)
    if low < 0 or (k is not None and high >= k):
        size = "" if k is None else f" but the codebook has {k} entries (0..{k - 1})"
        raise ValueError(f"{path}: cluster ids span {low}..{high}{size}; label the store again")
    info_file = path.with_suffix(".json")
    if info_file.exists():
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{info_file}: unreadable targets record ({err}); label the store again") from None
        if k is not None and info.get("k") is not None and int(info["k"]) != k:
            raise ValueError(f"{path}: targets of a K={info['k']} k-means model but the codebook has {k} entries")
        manifest = info.get("store_manifest_sha256")
        if manifest and manifest != store_fingerprint(store)["manifest_sha256"]:
            raise ValueError(
                f"{path}: labelled for another content of the store (its manifest changed since); label it again"
            )


def _recorded_k(store: ECGStore, name: str) -> int | None:
    """K of the k-means model the targets were made with, from ``{name}.json`` (None: not recorded)."""
    import json

    info_file = store.targets_path(name).with_suffix(".json")
    try:
        k = json.loads(info_file.read_text()).get("k") if info_file.exists() else None
    except (OSError, ValueError, AttributeError):
        return None  # check_targets names the broken record
    return int(k) if isinstance(k, int) else None


def _id_range(targets: np.ndarray, rows_per_chunk: int = 65536) -> tuple[int, int]:
    """(min, max) of a possibly huge memmapped array, a chunk of rows at a time."""
    low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for start in range(0, len(targets), rows_per_chunk):
        chunk = np.asarray(targets[start : start + rows_per_chunk])
        if chunk.size:
            low, high = min(low, int(chunk.min())), max(high, int(chunk.max()))
    return low, high


def majority_baseline(store: ECGStore, target_name: str, rows: np.ndarray, train_rows: np.ndarray) -> float:
    """Accuracy of always predicting the training set's most frequent cluster (a floor for masked accuracy).

    Over valid tokens only, as masked accuracy is: the padded tokens of short rows all share the cluster
    of a zero descriptor, and counting them would make that cluster the "majority" and inflate the floor.
    """
    targets = store.targets(target_name)
    train_rows, rows = np.sort(train_rows), np.sort(rows)
    train_valid = _first_window_tokens(store, train_rows, targets.shape[1])
    counts = np.bincount(np.asarray(targets[train_rows])[train_valid])
    majority = int(counts.argmax())
    valid = _first_window_tokens(store, rows, targets.shape[1])
    return float((np.asarray(targets[rows])[valid] == majority).mean())


def _first_window_tokens(store: ECGStore, rows: np.ndarray, n_tokens: int) -> np.ndarray:
    """(len(rows), n_tokens) bool: which tokens of each row's first window are whole real signal.

    From the rows' lengths and the conv layout of the store's rate (what labelling used for hand
    descriptors); when that layout gives another token count, every token counts.
    """
    from ..config import token_mask_from_sample_mask
    from .features import conv_layout

    window = int(round(store.spec.window_s * store.fs))
    kernels, strides = conv_layout(store.fs)
    real = np.minimum(np.asarray(store.lengths)[rows], window)
    sample_mask = np.tile(np.arange(window)[None, :] < real[:, None], (1, 12))  # lead after lead, as the input
    valid = np.asarray(token_mask_from_sample_mask(sample_mask, kernels, strides), dtype=bool)
    if valid.shape != (len(rows), n_tokens):
        return np.ones((len(rows), n_tokens), dtype=bool)
    return valid


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
    from ..atomic import sha256_file

    return {
        "kmeans_sha256": meta.get("kmeans_sha256"),
        "k": meta.get("k"),
        "rows": meta.get("n_rows"),
        "bytes": path.stat().st_size if path.exists() else None,
        # The labels themselves: the same k-means over another descriptor, or a relabelled store, gives
        # other targets under the same name, and a resumed run must not mix the two.
        "sha256": sha256_file(path) if path.exists() else None,
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

    _check_masking(alpha, mask_prob, None)
    store = ECGStore(store_path)
    targets = list(targets)
    # Before the run record is written: a refused run leaves no folder that a corrected command would clash with.
    for name in targets:
        check_targets(store, name, None, _recorded_k(store, name))
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
    # With the model: its token count and codebook sizes (the check above had neither).
    window = int(round(store.spec.window_s * store.fs))
    for name, k_model in zip(targets, model.config.vocab_sizes):
        check_targets(store, name, model.config.num_tokens(12 * window), k_model)
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


def _check_masking(alpha: float, mask_prob: float | None, min_masks: int | None) -> None:
    """Refuse a loss that no token can contribute to (it would be 0 at every step and train nothing)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if mask_prob is not None and not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if alpha == 0.0 and mask_prob is not None and mask_prob >= 1.0:
        raise ValueError(
            "alpha 0 weights only unmasked tokens but mask_prob 1 masks every token: the loss would be 0 "
            "at every step; lower mask_prob or raise alpha"
        )
    if alpha == 1.0 and mask_prob == 0.0 and min_masks == 0:
        raise ValueError(
            "alpha 1 weights only masked tokens but mask_prob 0 with no minimum number of masks masks none: "
            "the loss would be 0 at every step; raise mask_prob or lower alpha"
        )


def _targets_fingerprints(out_dir: str | None, store: ECGStore, names: Sequence[str]) -> dict[str, Any]:
    """The targets' fingerprints for the run record; a run recorded before their content checksum keeps
    resuming (its record cannot say what it trained on, so that checksum is left out of the comparison)."""
    from ..runs import RunSettingsError, read_run

    prints = {n: _targets_fingerprint(store, n) for n in names}
    try:
        previous = read_run(out_dir) if out_dir else None
    except RunSettingsError:
        previous = None  # begin_run names the broken record
    recorded = ((previous or {}).get("inputs") or {}).get("targets") or {}
    for name, print_ in prints.items():
        old = recorded.get(name) if isinstance(recorded, dict) else None
        if isinstance(old, dict) and "sha256" not in old:
            print_.pop("sha256", None)
    return prints


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
        extra_inputs={"targets": _targets_fingerprints(cfg.out_dir, store, run.targets or [])},
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


def _as_config_value(value: Any) -> Any:
    """A config value as ModelConfig stores it (lists of a YAML/JSON file become tuples)."""
    return tuple(value) if isinstance(value, list) else value


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
        if model.info.preprocessing is not None and model.info.preprocessing != store.spec.to_dict():
            import warnings

            # Said, not refused (as fine-tuning does): adapting a model to a new preparation can be the point.
            warnings.warn(
                f"{store.path}: prepared otherwise than the store {run.init_from} was pre-trained on; "
                "the new model records this store's preprocessing",
                stacklevel=3,
            )
        model.set_head(None, drop_codebooks=False)
        model.set_codebooks(vocab_sizes)
        # The loop passes its `model:` settings to every iteration; those the checkpoint already has
        # (its depth, width ...) are no change, and only real changes go to update_config (which refuses
        # architecture ones).
        overrides = {k: v for k, v in overrides.items() if getattr(model.config, k, object()) != _as_config_value(v)}
        if overrides:
            model.update_config(**overrides)
    else:
        rate = int(round(store.fs))
        model = create_model(run.size, input_rate_hz=rate, vocab_sizes=vocab_sizes, **overrides)
    model.info.preprocessing = store.spec.to_dict()
    model.info.kmeans = kmeans_refs
    model.info.source = f"pre-trained on {store.path}" + (f" from {run.init_from}" if run.init_from else "")
    return model
