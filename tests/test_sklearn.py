"""hubert_ecg.sklearn.Embedder inside scikit-learn pipelines and cross-validation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import hubert_ecg
from hubert_ecg import create_model
from hubert_ecg.sklearn import Embedder
from hubert_ecg.synthetic import synthetic_record


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny").eval()


@pytest.fixture(scope="module")
def rate_task():
    """Tachycardia (105-150 bpm) vs normal rate (62-95 bpm): 5 s synthetic records at 500 Hz."""
    rng = np.random.default_rng(0)
    y = np.arange(24) % 2
    X = np.stack([synthetic_record(rng, labels={"tachycardia": int(c)}, seconds=5.0).signal for c in y])
    return X, y


def test_transform_is_the_batch_embedding_and_fit_returns_self(model, rate_task):
    X, _ = rate_task
    embedder = Embedder(model, fs=500)
    assert embedder.fit(X[:4]) is embedder and embedder.n_features_out_ == model.config.hidden_size
    features = embedder.transform(X[:4])
    assert features.shape == (4, model.config.hidden_size) and features.dtype == np.float32
    np.testing.assert_allclose(features, hubert_ecg.embed(model, X[:4], fs=500), atol=1e-6)
    assert len(embedder.get_feature_names_out()) == model.config.hidden_size
    with pytest.raises(ValueError, match=r"expected a batch of records"):
        embedder.transform(X[0])


def test_params_clone_and_pickle(model, rate_task):
    embedder = Embedder(model, fs=250, layer=1, aggregate="max")
    params = embedder.get_params()
    assert params["fs"] == 250 and params["layer"] == 1 and params["model"] is model
    embedder.set_params(layer=2, stride_s=2.5)
    assert embedder.layer == 2 and embedder.stride_s == 2.5
    twin = clone(embedder)
    assert twin is not embedder and twin.get_params()["layer"] == 2 and twin.get_params()["stride_s"] == 2.5
    X, _ = rate_task
    embedder.set_params(fs=500, layer=None)
    restored = pickle.loads(pickle.dumps(embedder.fit(X[:2])))
    np.testing.assert_allclose(restored.transform(X[:2]), embedder.transform(X[:2]), atol=1e-6)


def test_cross_validated_logistic_probe_separates_heart_rate(model, rate_task):
    X, y = rate_task
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    probe = make_pipeline(Embedder(model, fs=500), StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    scores = cross_val_score(probe, X, y, cv=cv, scoring="roc_auc")
    assert scores.mean() > 0.85, scores
    # Chance level with shuffled labels (same features, computed once): the score comes from the signal.
    features = Embedder(model, fs=500).fit_transform(X)
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    rng = np.random.default_rng(1)
    null = [cross_val_score(head, features, rng.permutation(y), cv=cv, scoring="roc_auc").mean() for _ in range(10)]
    assert np.mean(null) < 0.7, null
    assert cross_val_score(head, features, y, cv=cv, scoring="roc_auc").mean() == pytest.approx(scores.mean(), abs=1e-6)
