"""Store-level pre-training targets: feature dumps, clustering and labelling, with resume and ranks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import StoreFactory
from hubert_ecg.checkpoint import load_model, save_pretrained
from hubert_ecg.loader import StoreWindows, batch_mask
from hubert_ecg.model import create_model, token_mask_from_sample_mask
from hubert_ecg.pretraining.features import hand_features
from hubert_ecg.pretraining.kmeans import KMeansModel, cluster_quality, fit_kmeans
from hubert_ecg.pretraining.targets import (
    LabelInterrupted,
    TargetsError,
    cluster_features,
    dump_features,
    iter_feature_batches,
    label_store,
)
from hubert_ecg.store import ECGStore

# 500 Hz samples of each synthetic record: 14 s (two rows), 10 s, 4 s (a padded window), ...
RECORD_SAMPLES = [7000, 5000, 5000, 2000, 5000, 5000, 7000, 5000, 5000, 3000]


pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def store(make_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> ECGStore:
    """13 rows at 100 Hz from 10 synthetic 12-lead .npy records (500 Hz, the reference layout)."""
    rng = np.random.default_rng(0)
    signals = []
    for i, n in enumerate(RECORD_SAMPLES):
        t = np.arange(n) / 500.0
        beat = np.sin(2 * np.pi * (1.0 + 0.15 * i) * t) ** 15  # spiky, ECG-like periodicity
        x = beat[None] * np.linspace(0.5, 1.5, 12)[:, None] + 0.05 * rng.standard_normal((12, n))
        signals.append(x.astype(np.float32))
    # Own root: the tests write targets into the store.
    return ECGStore(make_store(signals=signals, shard_records=4, root=tmp_path_factory.mktemp("targets")))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_pretrained(create_model("tiny"), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def hand_dump(store: ECGStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("feats") / "tfmfcc"
    return dump_features(store, out, kind="tf+mfcc", shard_rows=5, batch_size=3, progress=False)


def _read_dump(features_dir: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """store row -> (features (T, F), valid (T,)) over every shard listed in features.json."""
    meta = json.loads((features_dir / "features.json").read_text())
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for shard in meta["shards"]:
        rows = np.load(features_dir / f"{shard['name']}.rows.npy")
        feats = np.load(features_dir / f"{shard['name']}.npy")
        valid = np.load(features_dir / f"{shard['name']}.valid.npy")
        for r, f, v in zip(rows, feats, valid):
            assert int(r) not in out, f"row {r} dumped twice"
            out[int(r)] = (f, v)
    return out


def _first_windows(store: ECGStore, rows: np.ndarray) -> dict[str, torch.Tensor]:
    return StoreWindows(store, crop="first")[(0, np.asarray(rows, dtype=np.int64))]


# ------------------------------------------------------------------ dumping
def test_dumped_hand_features_equal_hand_features_of_first_windows(store: ECGStore, hand_dump: Path) -> None:
    dumped = _read_dump(hand_dump)
    rows = np.arange(len(store))
    assert sorted(dumped) == rows.tolist()
    batch = _first_windows(store, rows)
    expected = hand_features(batch["input"].numpy(), "tf+mfcc", store.fs)
    got = np.stack([dumped[r][0] for r in rows])
    np.testing.assert_array_equal(got, expected)
    # Validity is the model's own token-mask rule, and the short record does have padded tokens.
    valid = np.stack([dumped[r][1] for r in rows])
    np.testing.assert_array_equal(
        valid, token_mask_from_sample_mask(batch_mask(batch), (10, 3, 3, 2, 2), (4, 2, 2, 2, 2)).numpy()
    )
    assert 0 < (~valid).sum() < valid.size
    meta = json.loads((hand_dump / "features.json").read_text())
    assert (meta["kind"], meta["n_tokens"], meta["dim"], meta["n_rows"], meta["complete"]) == (
        "tf+mfcc",
        93,
        29,
        len(store),
        True,
    )


def test_iter_feature_batches_yields_valid_tokens_only(hand_dump: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hubert_ecg.pretraining.targets as targets_module

    monkeypatch.setattr(targets_module, "_ITER_ECGS", 2)  # several chunks per 5-row shard
    dumped = _read_dump(hand_dump)
    expected = np.concatenate([f[v] for f, v in (dumped[r] for r in sorted(dumped))])
    streamed = np.concatenate(list(iter_feature_batches(hand_dump)))
    np.testing.assert_array_equal(np.sort(streamed, axis=0), np.sort(expected, axis=0))
    assert streamed.shape == expected.shape
    assert sum(len(c) for c in iter_feature_batches(hand_dump, max_rows=150)) == 150
    only = np.concatenate(list(iter_feature_batches(hand_dump, only_rows=np.array([2]))))
    np.testing.assert_array_equal(only, dumped[2][0][dumped[2][1]])


@pytest.mark.parametrize("layer", [0, 2])
def test_hidden_features_equal_model_hidden_states(
    store: ECGStore, tiny_checkpoint: Path, tmp_path: Path, layer: int
) -> None:
    out = dump_features(
        store, tmp_path / "h", kind="hidden", checkpoint=tiny_checkpoint, layer=layer, shard_rows=8, progress=False
    )
    dumped = _read_dump(out)
    rows = np.arange(len(store))
    batch = _first_windows(store, rows)
    model = load_model(tiny_checkpoint)
    with torch.no_grad():
        reference = model(batch["input"], batch["attention_mask"], output_hidden_states=True)
    expected = reference.hidden_states[layer].numpy()
    np.testing.assert_allclose(np.stack([dumped[r][0] for r in rows]), expected, rtol=1e-4, atol=1e-5)
    meta = json.loads((out / "features.json").read_text())
    assert (meta["kind"], meta["layer"], meta["dim"], meta["checkpoint"]) == (
        "hidden",
        layer,
        64,
        str(tiny_checkpoint.resolve()),
    )


def test_hidden_layer_out_of_range_is_a_one_line_error(store: ECGStore, tiny_checkpoint: Path, tmp_path: Path) -> None:
    message = r"layer 3 does not exist \(0 = encoder input, 1\.\.2 = transformer layers\)"
    with pytest.raises(TargetsError, match=message):
        dump_features(store, tmp_path / "h", kind="hidden", checkpoint=tiny_checkpoint, layer=3, progress=False)
    with pytest.raises(TargetsError, match="kind 'hidden' needs a checkpoint and a layer"):
        dump_features(store, tmp_path / "h2", kind="hidden", progress=False)


def test_resume_recreates_a_deleted_shard_identically(store: ECGStore, tmp_path: Path) -> None:
    out = tmp_path / "f"
    with pytest.raises(LabelInterrupted, match="stopped after 1 shards"):
        dump_features(store, out, kind="tf", shard_rows=4, progress=False, stop_after_shards=1)
    assert not (out / "features.json").exists() and (out / "features-r0-00000.npy").exists()
    dump_features(store, out, kind="tf", shard_rows=4, progress=False)
    before = {p.name: p.read_bytes() for p in out.glob("features-*.npy")}
    kept_mtime = (out / "features-r0-00000.npy").stat().st_mtime_ns
    (out / "features-r0-00002.npy").unlink()
    (out / "features.json").unlink()
    dump_features(store, out, kind="tf", shard_rows=4, progress=False)
    after = {p.name: p.read_bytes() for p in out.glob("features-*.npy")}
    assert after == before
    assert (out / "features-r0-00000.npy").stat().st_mtime_ns == kept_mtime  # finished shards are skipped
    assert json.loads((out / "features.json").read_text())["complete"] is True


def test_other_settings_in_the_same_directory_are_refused(store: ECGStore, tmp_path: Path) -> None:
    dump_features(store, tmp_path / "f", kind="tf", progress=False)
    message = r"f: holds features dumped with other settings; use a new directory or delete it \(dim, kind\)"
    with pytest.raises(TargetsError, match=message):
        dump_features(store, tmp_path / "f", kind="mfcc", progress=False)


def test_two_ranks_cover_every_sampled_row_once(store: ECGStore, hand_dump: Path, tmp_path: Path) -> None:
    out = tmp_path / "f"
    dump_features(
        store, out, kind="tf+mfcc", sample_fraction=0.5, seed=3, rank=0, world_size=2, shard_rows=2, progress=False
    )
    assert not (out / "features.json").exists()  # rank 1 has not run yet
    dump_features(
        store, out, kind="tf+mfcc", sample_fraction=0.5, seed=3, rank=1, world_size=2, shard_rows=2, progress=False
    )
    meta = json.loads((out / "features.json").read_text())
    dumped = _read_dump(out)  # asserts no row twice
    expected_rows = np.sort(
        np.random.default_rng(3).choice(np.arange(len(store)), size=round(0.5 * len(store)), replace=False)
    )
    assert sorted(dumped) == expected_rows.tolist() and meta["n_rows"] == len(expected_rows)
    assert {s["name"][:11] for s in meta["shards"]} == {"features-r0", "features-r1"}
    single = _read_dump(hand_dump)
    for r, (f, v) in dumped.items():  # the same descriptor whichever rank computed it
        np.testing.assert_array_equal(f, single[r][0])
        np.testing.assert_array_equal(v, single[r][1])


# ------------------------------------------------------------------ clustering
@pytest.fixture(scope="module")
def clustered(hand_dump: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("km")
    return out, cluster_features(hand_dump, [3, 5], out, normaliser="standardise", held_out_fraction=0.25, seed=1)


def test_cluster_features_writes_models_quality_and_sweep(hand_dump: Path, clustered: tuple[Path, list[dict]]) -> None:
    out, results = clustered
    held = np.load(out / "held_out_rows.npy")
    assert len(held) == round(0.25 * 13)
    dumped = _read_dump(hand_dump)
    held_feats = np.concatenate([dumped[r][0][dumped[r][1]] for r in sorted(held)])
    fit_tokens = sum(int(v.sum()) for r, (_, v) in dumped.items() if r not in set(held.tolist()))
    for k, result in zip([3, 5], results):
        model = KMeansModel.load(out / f"k{k}")
        quality = json.loads((out / f"k{k}" / "quality.json").read_text())
        assert model.k == k and model.normaliser.mode == "standardise"
        assert model.metadata.kind == "tf+mfcc" and model.metadata.extra["feature_spec"]["kind"] == "tf+mfcc"
        assert model.metadata.n_fit_rows == fit_tokens  # the held-out ECGs were not fitted on
        # The fit is exactly the streaming fit over the non-held-out shards.
        reference = fit_kmeans(
            lambda: iter_feature_batches(hand_dump, exclude_rows=held), k, normaliser="standardise", seed=1
        )
        np.testing.assert_array_equal(model.centroids, reference.centroids)
        recomputed = cluster_quality(model, held_feats, seed=1)
        assert quality["inertia_total"] == pytest.approx(recomputed["inertia_total"], rel=1e-9)
        assert quality["cluster_sizes"] == recomputed["cluster_sizes"] and result["k"] == k
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["k"] for r in sweep["results"]] == [3, 5]
    assert (out / "inertia_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cluster_features_skips_finished_k(hand_dump: Path, clustered: tuple[Path, list[dict]]) -> None:
    out, results = clustered
    mtime = (out / "k3" / "kmeans.safetensors").stat().st_mtime_ns
    again = cluster_features(hand_dump, [3], out, normaliser="standardise", held_out_fraction=0.25, seed=1)
    assert again[0]["inertia_total"] == results[0]["inertia_total"]
    assert (out / "k3" / "kmeans.safetensors").stat().st_mtime_ns == mtime


# ------------------------------------------------------------------ labelling
def test_labels_equal_assign_on_dumped_features(
    store: ECGStore, hand_dump: Path, clustered: tuple[Path, list[dict]]
) -> None:
    out, _ = clustered
    names = label_store(store, [out / "k5"], "single", batch_size=4, progress=False)
    assert names == ["single"]
    targets = store.targets("single")
    assert targets.dtype == np.int16 and targets.shape == (len(store), 93)
    model = KMeansModel.load(out / "k5")
    dumped = _read_dump(hand_dump)
    expected = model.assign(np.stack([dumped[r][0] for r in range(len(store))]))
    np.testing.assert_array_equal(targets, expected)
    # The stored standardisation matters: nearest centroid on raw descriptors would label differently.
    raw = np.stack([dumped[r][0] for r in range(len(store))]).reshape(-1, 29)
    raw_nearest = ((raw[:, None, :] - model.centroids[None]) ** 2).sum(-1).argmin(1).reshape(targets.shape)
    assert (raw_nearest != expected).any()
    info = json.loads(store.targets_path("single").with_suffix(".json").read_text())
    assert (info["k"], info["kind"]) == (5, "tf+mfcc")
    assert info["kmeans"] == str((out / "k5" / "kmeans.safetensors").resolve())
    assert len(info["kmeans_sha256"]) == 64
    assert not list(store.targets_path("single").parent.glob("single.progress*"))


def test_several_kmeans_models_give_several_target_arrays(
    store: ECGStore, hand_dump: Path, clustered: tuple[Path, list[dict]]
) -> None:
    out, _ = clustered
    names = label_store(store, [out / "k3", out / "k5"], "ens", progress=False)
    assert names == ["ens-0", "ens-1"]
    dumped = _read_dump(hand_dump)
    feats = np.stack([dumped[r][0] for r in range(len(store))])
    for name, k in zip(names, (3, 5)):
        np.testing.assert_array_equal(store.targets(name), KMeansModel.load(out / f"k{k}").assign(feats))
    batch = StoreWindows(store, targets=names)[(0, np.arange(4))]
    assert batch["targets"].shape == (4, 2, 93)


def test_label_store_resumes_after_an_interruption(store: ECGStore, clustered: tuple[Path, list[dict]]) -> None:
    out, _ = clustered
    reference = label_store(store, [out / "k5"], "ref", batch_size=2, progress=False)
    targets_dir = store.targets_path("ref").parent
    with pytest.raises(LabelInterrupted, match=r"resume\.npy\.partial: stopped after 3 blocks \(incomplete\)"):
        label_store(store, [out / "k5"], "resume", batch_size=2, progress=False, stop_after_blocks=3)
    assert not store.targets_path("resume").exists()
    assert json.loads((targets_dir / "resume.progress-r0.json").read_text()) == {"done": [[0, 3]]}
    with pytest.raises(
        TargetsError,
        match=r"resume\.npy\.partial: an unfinished labelling with other settings "
        r"exists; .* \(block_rows\)",
    ):
        label_store(store, [out / "k5"], "resume", batch_size=3, progress=False)
    # Forget block 2 (as if killed between writing it and recording it): it is simply redone.
    (targets_dir / "resume.progress-r0.json").write_text(json.dumps({"done": [[0, 2]]}))
    assert label_store(store, [out / "k5"], "resume", batch_size=2, progress=False) == ["resume"]
    np.testing.assert_array_equal(store.targets("resume"), store.targets(reference[0]))
    assert not (targets_dir / "resume.npy.partial").exists()


def test_two_ranks_fill_one_target_array(store: ECGStore, clustered: tuple[Path, list[dict]]) -> None:
    out, _ = clustered
    single = label_store(store, [out / "k3"], "one", batch_size=3, progress=False)
    # Rank 1 first: whichever rank arrives first creates the shared memmap; the last to finish renames it.
    label_store(store, [out / "k3"], "two", batch_size=3, rank=1, world_size=2, progress=False)
    assert not store.targets_path("two").exists()
    label_store(store, [out / "k3"], "two", batch_size=3, rank=0, world_size=2, progress=False)
    np.testing.assert_array_equal(store.targets("two"), store.targets(single[0]))


def test_existing_targets_from_another_kmeans_are_refused(store: ECGStore, clustered: tuple[Path, list[dict]]) -> None:
    out, _ = clustered
    label_store(store, [out / "k3"], "taken", progress=False)
    assert label_store(store, [out / "k3"], "taken", progress=False) == ["taken"]  # done: kept as is
    with pytest.raises(TargetsError, match=r"taken\.npy: targets from another k-means model exist"):
        label_store(store, [out / "k5"], "taken", progress=False)


def test_hidden_targets_follow_the_kmeans_metadata(store: ECGStore, tiny_checkpoint: Path, tmp_path: Path) -> None:
    feats = dump_features(store, tmp_path / "h", kind="hidden", checkpoint=tiny_checkpoint, layer=1, progress=False)
    cluster_features(feats, [4], tmp_path / "km", held_out_fraction=0.0)
    model = KMeansModel.load(tmp_path / "km" / "k4")
    assert (model.metadata.kind, model.metadata.layer) == ("latent", 1)
    # No kind/checkpoint/layer given: all three come from the k-means file.
    label_store(store, [tmp_path / "km" / "k4"], "hidden-it2", progress=False)
    dumped = _read_dump(feats)
    expected = model.assign(np.stack([dumped[r][0] for r in range(len(store))]))
    np.testing.assert_array_equal(store.targets("hidden-it2"), expected)
    info = json.loads(store.targets_path("hidden-it2").with_suffix(".json").read_text())
    assert (info["kind"], info["layer"], info["checkpoint"]) == ("hidden", 1, str(tiny_checkpoint.resolve()))
    shutil.rmtree(tmp_path / "h")


# ------------------------------------------------------------------ run records of the stages
def test_every_stage_writes_a_run_record(
    store: ECGStore, hand_dump: Path, clustered: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    """features, cluster and label each record their resolved settings, versions and input fingerprints."""
    features = json.loads((hand_dump / "run.json").read_text())
    assert features["kind"] == "features" and features["settings"]["features"]["kind"] == "tf+mfcc"
    assert features["settings"]["features"]["shard_rows"] == 5 and features["settings"]["features"]["batch_size"] == 3
    assert features["inputs"]["store"]["rows"] == len(store)
    assert len(features["inputs"]["store"]["manifest_sha256"]) == 64
    assert "torch" in features["versions"] and features["command"]
    out, _ = clustered
    cluster = json.loads((out / "run.json").read_text())
    assert cluster["settings"]["cluster"]["normaliser"] == "standardise"
    assert cluster["settings"]["cluster"]["ks"][0] == 3  # [3, 5], or [3] after the skip-finished-K test
    assert (
        cluster["inputs"]["features"]["rows_sha256"]
        == json.loads((hand_dump / "features.json").read_text())["rows_sha256"]
    )
    label_store(store, [out / "k3"], "recorded", progress=False)
    label = json.loads(store.targets_path("recorded").with_name("recorded.run.json").read_text())
    assert label["kind"] == "label" and label["settings"]["label"]["names"] == ["recorded"]
    assert label["inputs"]["kmeans_sha256"] == [
        json.loads(store.targets_path("recorded").with_suffix(".json").read_text())["kmeans_sha256"]
    ]
    # a re-run with other settings keeps the earlier record
    cluster_features(hand_dump, [2], tmp_path, normaliser="standardise", held_out_fraction=0.25, seed=1)
    cluster_features(hand_dump, [2], tmp_path, normaliser="l2", held_out_fraction=0.25, seed=1)
    again = json.loads((tmp_path / "run.json").read_text())
    assert again["settings"]["cluster"]["normaliser"] == "l2"
    assert again["earlier"][-1]["settings"]["cluster"]["normaliser"] == "standardise"
