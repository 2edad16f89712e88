"""Pre-training stages fed mismatched or stale inputs: each is refused (or redone), never trained on silently.

Covers: labelling with a descriptor other than the k-means model's, checkpoints changed in place, stores that
gained rows since labelling, K out of range, targets of another store / K / content, degenerate masking,
padded tokens in the loss and in k-means, and a loop whose earlier iteration changed after later ones ran.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import StoreFactory
from hubert_ecg.checkpoint import load_model, save_pretrained
from hubert_ecg.model import create_model, sample_span_mask
from hubert_ecg.pretraining.kmeans import KMeansModel
from hubert_ecg.pretraining.objective import masked_prediction_loss, run_pretrain
from hubert_ecg.pretraining.targets import (
    TargetsError,
    cluster_features,
    dump_features,
    iter_feature_batches,
    label_store,
)
from hubert_ecg.runs import RunSettingsError
from hubert_ecg.store import ECGStore, prepare_store
from hubert_ecg.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_threaded")

# 500 Hz samples per record: 10 s (two rows), 5 s, 3 s (a padded window: invalid tokens at each lead's end).
RECORD_SAMPLES = [5000, 2500, 2500, 1500, 2500, 2500, 5000, 2500]


def _signals(n_samples: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(n_samples):
        t = np.arange(n) / 500.0
        beat = np.sin(2 * np.pi * (1.0 + 0.15 * i) * t) ** 15
        x = beat[None] * np.linspace(0.5, 1.5, 12)[:, None] + 0.05 * rng.standard_normal((12, n))
        out.append(x.astype(np.float32))
    return out


@pytest.fixture(scope="module")
def store(make_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> ECGStore:
    root = tmp_path_factory.mktemp("round3")
    return ECGStore(make_store(signals=_signals(RECORD_SAMPLES), shard_records=4, root=root))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    first = save_pretrained(create_model("tiny"), root / "a")
    torch.manual_seed(1)
    second = save_pretrained(create_model("tiny"), root / "b")
    return first, second


@pytest.fixture(scope="module")
def hidden_kmeans(store: ECGStore, checkpoints: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k-means (K=3) fitted on layer-1 hidden states of a copy of checkpoint a (tests may change the copy)."""
    root = tmp_path_factory.mktemp("hidden")
    ckpt = Path(shutil.copytree(checkpoints[0], root / "ckpt"))
    feats = dump_features(store, root / "f", kind="hidden", checkpoint=ckpt, layer=1, progress=False)
    cluster_features(feats, [3], root / "km", held_out_fraction=0.0)
    return root / "km" / "k3"


# ------------------------------------------------------------------ label: the k-means model's own descriptor
def test_label_refuses_a_descriptor_other_than_the_one_the_kmeans_was_fitted_on(
    store: ECGStore, checkpoints: tuple[Path, Path], hidden_kmeans: Path, tmp_path: Path
) -> None:
    ckpt = hidden_kmeans.parent.parent / "ckpt"
    for override, what in (
        ({"layer": 2}, r"differs in: layer"),
        ({"checkpoint": checkpoints[1]}, r"differs in: checkpoint \(weights sha256\)"),
        ({"kind": "tf"}, r"differs in: kind"),
    ):
        with pytest.raises(TargetsError, match=rf"kmeans\.safetensors: fitted on .*{what}"):
            label_store(store, [hidden_kmeans], "wrong", progress=False, **override)
        assert not store.targets_path("wrong").exists()
    # The same weights elsewhere are the same descriptor; no arguments replay the recorded one.
    moved = Path(shutil.copytree(ckpt, tmp_path / "moved"))
    label_store(store, [hidden_kmeans], "replayed", progress=False)
    label_store(store, [hidden_kmeans], "moved", checkpoint=moved, layer=1, progress=False)
    np.testing.assert_array_equal(store.targets("replayed"), store.targets("moved"))


def test_a_checkpoint_changed_in_place_makes_its_features_kmeans_and_targets_stale(
    store: ECGStore, checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt = Path(shutil.copytree(checkpoints[0], tmp_path / "ckpt"))
    feats = dump_features(store, tmp_path / "f", kind="hidden", checkpoint=ckpt, layer=1, progress=False)
    cluster_features(feats, [3], tmp_path / "km", held_out_fraction=0.0)
    label_store(store, [tmp_path / "km" / "k3"], "inplace", progress=False)
    # The run folder is retrained: same path, other weights.
    shutil.rmtree(ckpt)
    shutil.copytree(checkpoints[1], ckpt)
    with pytest.raises(TargetsError, match=r"features dumped with other settings; .* \(checkpoint_sha256\)"):
        dump_features(store, tmp_path / "f", kind="hidden", checkpoint=ckpt, layer=1, progress=False)
    with pytest.raises(TargetsError, match=r"the checkpoint changed since the k-means model was fitted"):
        label_store(store, [tmp_path / "km" / "k3"], "inplace", progress=False)  # even the finished name
    with pytest.raises(TargetsError, match=r"the checkpoint changed since"):
        label_store(store, [tmp_path / "km" / "k3"], "inplace-2", progress=False)


def test_hidden_features_of_a_store_prepared_otherwise_than_the_model_are_refused(
    store: ECGStore, checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    model = load_model(checkpoints[0])
    model.info.preprocessing = {**store.spec.to_dict(), "scaling": "zscore"}
    other = save_pretrained(model, tmp_path / "other-prep")
    with pytest.raises(TargetsError, match=r"another preprocessing than the model .* \(differs in: scaling\)"):
        dump_features(store, tmp_path / "f", kind="hidden", checkpoint=other, layer=1, progress=False)
    model.info.preprocessing = store.spec.to_dict()
    same = save_pretrained(model, tmp_path / "same-prep")
    dump_features(store, tmp_path / "g", kind="hidden", checkpoint=same, layer=1, progress=False)


# ------------------------------------------------------------------ label: a store that gained rows
def test_targets_of_a_store_that_gained_rows_are_stale(make_store: StoreFactory, tmp_path: Path) -> None:
    path = make_store(signals=_signals([2500] * 6), root=tmp_path)
    store = ECGStore(path)
    feats = dump_features(store, tmp_path / "f", kind="tf", progress=False)
    cluster_features(feats, [3], tmp_path / "km", held_out_fraction=0.0)
    label_store(store, [tmp_path / "km" / "k3"], "it1", progress=False)
    for i, signal in enumerate(_signals([2500] * 3, seed=9)):
        np.save(tmp_path / "data" / f"new{i}.npy", signal)
    prepare_store([tmp_path / "data"], path, read_kwargs={"fs": 500.0}, progress=False)
    grown = ECGStore(path)
    assert len(grown) == 9
    with pytest.raises(TargetsError, match=r"it1\.npy: stale targets \(labelled 6 rows, the store now has 9"):
        label_store(grown, [tmp_path / "km" / "k3"], "it1", progress=False)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=1, batch_size=4, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"it1\.npy: targets of shape \(6, \d+\) but the store needs \(9, "):
        run_pretrain(str(path), ["it1"], cfg, size="tiny")
    assert not (tmp_path / "run" / "run.json").exists()  # refused before the run record: nothing to clash with
    with pytest.raises(TargetsError, match=r"features dumped with other settings; .* \(.*store_rows"):
        dump_features(grown, tmp_path / "f", kind="tf", progress=False)
    label_store(grown, [tmp_path / "km" / "k3"], "it1-grown", progress=False)
    assert grown.targets("it1-grown").shape[0] == 9


# ------------------------------------------------------------------ cluster: K out of range
def test_cluster_refuses_k_below_two_and_k_above_the_fitting_tokens(store: ECGStore, tmp_path: Path) -> None:
    feats = dump_features(store, tmp_path / "f", kind="tf", progress=False)
    with pytest.raises(TargetsError, match=r"k values must be integers >= 2, got \[1\]"):
        cluster_features(feats, [1], tmp_path / "km")
    n_fit = sum(int(v.sum()) for v in (np.load(p) for p in sorted(feats.glob("*.valid.npy"))))
    with pytest.raises(TargetsError, match=rf"K={n_fit + 1} is more than the {n_fit} valid tokens"):
        cluster_features(feats, [2, n_fit + 1], tmp_path / "km", held_out_fraction=0.0)
    assert not (tmp_path / "km" / "k2").exists()  # refused before any K was fitted


# ------------------------------------------------------------------ padded tokens
def test_padded_tokens_never_reach_kmeans_and_the_normaliser_sees_fitting_rows_only(
    store: ECGStore, tmp_path: Path
) -> None:
    feats = dump_features(store, tmp_path / "f", kind="tf", progress=False)
    valid = np.concatenate([np.load(p) for p in sorted(feats.glob("*.valid.npy"))])
    assert not valid.all()  # the 3 s record is padded: some tokens are invalid
    streamed = np.concatenate(list(iter_feature_batches(feats)))
    assert streamed.shape[0] == int(valid.sum())
    (result,) = cluster_features(feats, [3], tmp_path / "km", normaliser="standardise", held_out_fraction=0.3)
    held = np.load(tmp_path / "km" / "held_out_rows.npy")
    fitting = np.concatenate(list(iter_feature_batches(feats, exclude_rows=held))).astype(np.float64)
    model = KMeansModel.load(result["path"])
    np.testing.assert_allclose(model.normaliser.mean, fitting.mean(axis=0), rtol=1e-6)


def test_padded_tokens_never_contribute_to_the_loss() -> None:
    torch.manual_seed(0)
    b, t, k = 2, 6, 4
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    mask = torch.tensor([[True, False, True, False, False, True], [False, True, False, True, True, False]])
    logits = torch.randn(b, t, k, requires_grad=True)
    targets = torch.randint(0, k, (b, 1, t))
    for alpha in (1.0, 0.5, 0.0):
        loss, stats = masked_prediction_loss([logits], targets, mask, valid, alpha)
        garbage_logits = logits.detach().clone()
        garbage_logits[~valid] = float("nan")
        garbage_targets = targets.clone()
        garbage_targets[:, 0][~valid] = 10_000  # outside [0, K): would fail if it reached cross-entropy
        leaf = garbage_logits.requires_grad_(True)
        loss2, stats2 = masked_prediction_loss([leaf], garbage_targets, mask, valid, alpha)
        torch.testing.assert_close(loss2, loss)
        torch.testing.assert_close(stats2["masked_acc"], stats["masked_acc"])
        loss2.backward()
        assert torch.isfinite(leaf.grad).all() and (leaf.grad[~valid] == 0).all()
        # By hand: the mean cross-entropy over the selected valid tokens only.
        ce = torch.nn.functional.cross_entropy(logits.detach().transpose(1, 2), targets[:, 0], reduction="none")
        expected = alpha * ce[mask & valid].mean() + (1 - alpha) * ce[~mask & valid].mean()
        torch.testing.assert_close(loss.detach(), expected)
    spans = sample_span_mask(2, t, mask_prob=1.0, min_masks=2, token_mask=valid)
    assert not spans[~valid].any() and spans[valid].all()


# ------------------------------------------------------------------ pretrain: targets that do not fit
def _cfg(out: Path, **kw: object) -> TrainConfig:
    settings = {"max_steps": 1, "batch_size": 4, "val_every": 1, "device": "cpu", "progress": False, "logger": "none"}
    return TrainConfig(out_dir=str(out), **{**settings, **kw})  # type: ignore[arg-type]


@pytest.fixture()
def labelled(make_store: StoreFactory, tmp_path: Path) -> tuple[Path, Path]:
    """A store of its own with targets ``it1`` (K=3); returns (store path, targets file)."""
    path = make_store(signals=_signals([2500] * 6), root=tmp_path)
    store = ECGStore(path)
    feats = dump_features(store, tmp_path / "f", kind="tf", progress=False)
    cluster_features(feats, [3], tmp_path / "km", held_out_fraction=0.0)
    label_store(store, [tmp_path / "km" / "k3"], "it1", progress=False)
    return path, store.targets_path("it1")


def test_pretrain_refuses_truncated_out_of_range_and_other_k_targets(
    labelled: tuple[Path, Path], tmp_path: Path
) -> None:
    path, targets = labelled
    good = targets.read_bytes()
    targets.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"it1\.npy: unreadable targets"):
        run_pretrain(str(path), ["it1"], _cfg(tmp_path / "a"), size="tiny")
    with pytest.raises(TargetsError, match=r"it1\.npy: stale targets \(the file is unreadable"):
        label_store(ECGStore(path), [tmp_path / "km" / "k3"], "it1", progress=False)  # not "done"
    targets.write_bytes(good)
    array = np.load(targets, mmap_mode="r+")
    array[0, 0] = 7
    array.flush()
    del array
    with pytest.raises(ValueError, match=r"cluster ids span 0\.\.7 but the codebook has 3 entries"):
        run_pretrain(str(path), ["it1"], _cfg(tmp_path / "b"), size="tiny")
    targets.write_bytes(good)
    info_file = targets.with_suffix(".json")
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps({**info, "store_manifest_sha256": "0" * 64}))
    with pytest.raises(ValueError, match=r"labelled for another content of the store"):
        run_pretrain(str(path), ["it1"], _cfg(tmp_path / "c"), size="tiny")
    info_file.write_text(json.dumps(info))
    for out in ("a", "b", "c"):
        assert not (tmp_path / out / "run.json").exists()


def test_pretrain_resumed_on_other_targets_under_the_same_name_is_refused(
    labelled: tuple[Path, Path], tmp_path: Path
) -> None:
    path, targets = labelled
    run_pretrain(str(path), ["it1"], _cfg(tmp_path / "run"), size="tiny")
    array = np.load(targets, mmap_mode="r+")
    array[:] = (np.asarray(array) + 1) % 3  # same k-means, K, shape and size: other labels
    array.flush()
    del array
    with pytest.raises(RunSettingsError, match=r"refused: inputs\.targets\.it1\.sha256"):
        run_pretrain(str(path), ["it1"], _cfg(tmp_path / "run", max_steps=2), size="tiny", resume=True)


def test_a_loss_no_token_can_contribute_to_is_refused(labelled: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = labelled
    with pytest.raises(ValueError, match=r"mask_prob 1 masks every token: the loss would be 0"):
        run_pretrain(str(path), ["it1"], _cfg(tmp_path / "run"), size="tiny", alpha=0.0, mask_prob=1.0)
    with pytest.raises(ValueError, match=r"masks none: the loss would be 0"):
        run_pretrain(
            str(path),
            ["it1"],
            _cfg(tmp_path / "run2"),
            size="tiny",
            alpha=1.0,
            mask_prob=0.0,
            model_overrides={"mask_time_min_masks": 0},
        )


# ------------------------------------------------------------------ pretrain-loop: stale downstream outputs
def _loop_config(tmp_path: Path, out: str = "loop") -> Path:
    train = {"max_steps": 1, "batch_size": 4, "val_every": 1, "num_workers": 0, "progress": False, "logger": "none"}
    config = {
        "store": "store",
        "out": out,
        "size": "tiny",
        "device": "cpu",
        "model": {"num_hidden_layers": 1},
        "iterations": [
            {"name": "it1", "features": {"kind": "tf"}, "kmeans": {"k": 3, "n_threads": 1}, "train": train},
            {"name": "it2", "features": {"layer": 1}, "kmeans": {"k": 3, "n_threads": 1}, "train": train},
        ],
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_loop_redoes_iterations_made_from_an_earlier_state_of_the_previous_model(
    make_store: StoreFactory, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from hubert_ecg.pretraining.loop import run_pretrain_loop

    make_store(signals=_signals([2500] * 8), root=tmp_path)
    config = _loop_config(tmp_path)
    run_pretrain_loop(config)
    it1 = tmp_path / "loop" / "it1" / "run"
    previous = it1 / "best" if (it1 / "best").exists() else it1 / "last"
    targets = ECGStore(tmp_path / "store").targets_path("it2-k3")
    before = targets.read_bytes()
    # Iteration 1's model changes after iteration 2 was made from it (as a --resume to more steps does).
    model = load_model(previous)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_pretrained(model, tmp_path / "changed")
    shutil.rmtree(previous)
    shutil.copytree(tmp_path / "changed", previous)
    capsys.readouterr()
    assert previous.name == "best"  # what --dry-run reads
    run_pretrain_loop(config, dry_run=True)
    assert "-> to redo (made from an earlier state of the previous model)" in capsys.readouterr().out
    run_pretrain_loop(config)
    assert "it2: made from an earlier state of the previous model; moved to" in capsys.readouterr().out
    stale = tmp_path / "loop" / "it2" / "stale-1"
    assert (stale / "features").is_dir() and (stale / "run").is_dir() and (stale / "it2-k3.npy").exists()
    assert (stale / "it2-k3.npy").read_bytes() == before  # kept, never deleted
    init = json.loads((tmp_path / "loop" / "it2" / "run" / "run.json").read_text())["inputs"]["init"]
    from hubert_ecg.runs import checkpoint_fingerprint

    assert init["sha256"] == checkpoint_fingerprint(previous)["sha256"]  # retrained from the new model
    capsys.readouterr()
    run_pretrain_loop(config)  # now current: nothing moved again
    assert "moved to" not in capsys.readouterr().out and not (tmp_path / "loop" / "it2" / "stale-2").exists()

    # Iteration 1's targets replaced under the same name: its finished run learned the old ones.
    it1_targets = ECGStore(tmp_path / "store").targets_path("it1-k3")
    array = np.load(it1_targets, mmap_mode="r+")
    array[:] = (np.asarray(array) + 1) % 3
    array.flush()
    del array
    capsys.readouterr()
    run_pretrain_loop(config)
    out = capsys.readouterr().out
    assert "it1: trained on other targets than the store now holds; moved to" in out
    assert (tmp_path / "loop" / "it1" / "stale-1" / "run" / "last").is_dir()
    assert "it2: made from an earlier state of the previous model" in out  # and so on down the loop

    # Another loop on the same store with the same iteration names must not take these targets as its own.
    with pytest.raises(ValueError, match=r"it1-k3\.npy: targets of this name exist but were not made by this run"):
        run_pretrain_loop(_loop_config(tmp_path, out="other"))


def test_standardisation_statistics_come_from_a_random_set_of_fitting_ecgs_not_the_stream_head(
    store: ECGStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store prepared source after source must not be standardised by its first source alone."""
    import hubert_ecg.pretraining.targets as targets_module

    feats = dump_features(store, tmp_path / "f", kind="tf", progress=False)
    monkeypatch.setattr(targets_module, "_NORMALISER_TOKENS", 200)  # fewer than the dump's fitting tokens
    (result,) = cluster_features(feats, [3], tmp_path / "km", normaliser="standardise", held_out_fraction=0.0)
    mean = KMeansModel.load(result["path"]).normaliser.mean
    per_row = {}
    for shard in sorted(feats.glob("features-*.rows.npy")):
        name = shard.name[: -len(".rows.npy")]
        rows, valid = np.load(shard), np.load(feats / f"{name}.valid.npy")
        descriptors = np.load(feats / f"{name}.npy")
        for i, row in enumerate(rows):
            per_row[int(row)] = descriptors[i][valid[i]].astype(np.float64)
    # The mean over whole ECGs: a seeded subset of rows (about 200 tokens' worth), neither all of them
    # (the old head of the stream: one chunk holds every ECG of this small dump) nor the first ones.
    from itertools import combinations

    rows = sorted(per_row)
    matches = [
        subset
        for size in range(1, len(rows) + 1)
        for subset in combinations(rows, size)
        if np.allclose(mean, np.concatenate([per_row[r] for r in subset]).mean(axis=0), rtol=1e-6)
    ]
    assert matches and all(len(m) < len(rows) and list(m) != rows[: len(m)] for m in matches)


def test_hand_descriptors_refuse_a_checkpoint_or_layer_instead_of_ignoring_it(
    store: ECGStore, checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(TargetsError, match=r"kind 'tf' is computed from the signal: it takes no checkpoint or layer"):
        dump_features(store, tmp_path / "f", kind="tf", checkpoint=checkpoints[0], layer=1, progress=False)
    feats = dump_features(store, tmp_path / "f", kind="tf", progress=False)
    cluster_features(feats, [3], tmp_path / "km", held_out_fraction=0.0)
    with pytest.raises(TargetsError, match=r"no k-means model here was fitted on hidden states"):
        label_store(store, [tmp_path / "km" / "k3"], "tf-layer", layer=3, progress=False)


def test_a_run_recorded_before_the_targets_checksum_still_resumes(labelled: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = labelled
    run_pretrain(str(path), ["it1"], _cfg(tmp_path / "run"), size="tiny")
    record_file = tmp_path / "run" / "run.json"
    record = json.loads(record_file.read_text())
    assert len(record["inputs"]["targets"]["it1"]["sha256"]) == 64
    del record["inputs"]["targets"]["it1"]["sha256"]  # as an older version wrote it
    record_file.write_text(json.dumps(record))
    run_pretrain(str(path), ["it1"], _cfg(tmp_path / "run", max_steps=2), size="tiny", resume=True)
    assert json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())["step"] == 2


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["it", "it"], r"iterations\[2\]\.name: 'it' is already the name of iteration 1"),
        (["it1", "../it2"], r"iterations\[2\]\.name: '\.\./it2' must be a plain name"),
    ],
)
def test_loop_iterations_need_distinct_plain_names(tmp_path: Path, names: list[str], message: str) -> None:
    """Two iterations of one name would share a folder: the second would be skipped as already trained."""
    from hubert_ecg.pretraining.loop import ConfigError, load_config

    config = {"store": "store", "out": "loop", "iterations": [{"name": n} for n in names]}
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_masks_of_a_short_row_reach_every_lead_and_never_a_padded_token() -> None:
    """A short row is padded at the end of every lead: its valid tokens are not a prefix of the sequence."""
    from types import SimpleNamespace

    from hubert_ecg.model import token_mask_from_sample_mask
    from hubert_ecg.pretraining.objective import PretrainObjective

    model = create_model("tiny")
    window = 500
    sample_mask = np.ones((2, 12 * window), dtype=bool)
    for lead in range(12):
        sample_mask[0, lead * window + 300 : (lead + 1) * window] = False  # row 0: 3 s of 5 s real
    token_mask = torch.as_tensor(
        token_mask_from_sample_mask(sample_mask, model.config.conv_kernel, model.config.conv_stride)
    )
    assert not token_mask[0].all() and token_mask[1].all()
    fake = SimpleNamespace(model=model, seed=0)
    batch = {"input": torch.zeros(2, 12 * window)}
    counts = torch.zeros(token_mask.shape)
    n_draws = 200
    for key in range(n_draws):
        mask = PretrainObjective._masks(fake, batch, key, 0, 2, token_mask, torch.device("cpu"))  # type: ignore[arg-type]
        assert not mask[~token_mask].any()
        counts += mask.float()
        if key == 0:  # a full row is masked exactly as before (valid tokens already a prefix)
            generator = torch.Generator().manual_seed(key)
            u = torch.rand((), generator=generator)
            scores = torch.rand(2, token_mask.shape[1], generator=generator)
            expected = sample_span_mask(
                2, token_mask.shape[1], mask_prob=0.33, scores=scores, u=u, token_mask=token_mask[1:].expand(2, -1)
            )
            assert torch.equal(mask[1], expected[1])
    rate = counts[0][token_mask[0]] / n_draws
    n_valid = int(token_mask[0].sum())
    # Every valid token, the last leads' too, is masked at about the span rate of the row.
    assert rate.min() > 0.15 and abs(float(rate.mean()) - int(0.33 * n_valid + 0.5) / n_valid) < 0.05


def test_majority_baseline_counts_valid_tokens_only(store: ECGStore, tmp_path: Path) -> None:
    """Padded tokens share the zero descriptor's cluster; counted, they would become the 'majority'."""
    from hubert_ecg.pretraining.objective import _first_window_tokens, majority_baseline

    feats = dump_features(store, tmp_path / "f", kind="tf", progress=False)
    rows = np.concatenate([np.load(p) for p in sorted(feats.glob("*.rows.npy"))])
    valid = np.concatenate([np.load(p) for p in sorted(feats.glob("*.valid.npy"))])[np.argsort(rows)]
    all_rows = np.arange(len(store))
    np.testing.assert_array_equal(_first_window_tokens(store, all_rows, valid.shape[1]), valid)  # as labelling saw it
    # Hand-made targets: valid tokens are cluster 0 except one in ten (cluster 1); padded tokens are cluster 2,
    # and there are more padded tokens than valid ones in the short row.
    targets = np.where(valid, 0, 2).astype(np.int16)
    targets[:, ::10] = np.where(valid[:, ::10], 1, 2)
    store.targets_path("hand-baseline").parent.mkdir(exist_ok=True)
    np.save(store.targets_path("hand-baseline"), targets)
    short = np.flatnonzero(~valid.all(axis=1))
    assert short.size and (~valid[short]).sum() > valid[short].sum()
    expected = float((targets[short][valid[short]] == 0).mean())
    assert majority_baseline(store, "hand-baseline", short, short) == pytest.approx(expected)
    store.targets_path("hand-baseline").unlink()


def test_pretrain_on_the_name_of_a_several_model_labelling_names_its_parts(
    labelled: tuple[Path, Path], tmp_path: Path
) -> None:
    path, _ = labelled
    cluster_features(tmp_path / "f", [2], tmp_path / "km", held_out_fraction=0.0)
    label_store(ECGStore(path), [tmp_path / "km" / "k2", tmp_path / "km" / "k3"], "two", progress=False)
    with pytest.raises(
        ValueError, match=r"no targets named 'two' \(labelling with several k-means models wrote two-0, two-1"
    ):
        run_pretrain(str(path), ["two"], _cfg(tmp_path / "run"), size="tiny")
    assert not (tmp_path / "run" / "run.json").exists()


def test_loop_config_with_a_loss_no_token_can_contribute_to_is_refused_up_front(tmp_path: Path) -> None:
    from hubert_ecg.pretraining.loop import ConfigError, load_config

    config = {"store": "store", "out": "loop", "iterations": [{"train": {"alpha": 0.0, "mask_prob": 1.0}}]}
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"iterations\[1\]\.train: alpha 0 .* the loss would be 0"):
        load_config(path)
