"""knn and simpleshot on cached features, and the test-set calibration metrics, against scikit-learn and
hand computation; baseline trials end to end on synthetic data with a tiny backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as sk_metrics
import torch
from sklearn import neighbors

from cytotune.config import TrainSettings, TrialConfig
from cytotune.data.synthetic import generate_synthetic
from cytotune.train import run_trial
from cytotune.train.baselines import knn_probabilities, simpleshot_probabilities
from cytotune.train.calibration import (
    evaluate_probabilities,
    expected_calibration_error,
    negative_log_likelihood,
    parse_correctness,
    reliability_bins,
)
from cytotune.train.linear_probe import probe_features
from cytotune.train.trial_data import trial_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clustered(seed: int, n: int, dim: int = 12, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Features around one random centre per class (overlapping, so neither method is perfect)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, dim)) * 1.5 + 3.0
    labels = rng.integers(0, classes, n)
    return centres[labels] + rng.normal(size=(n, dim)) * 1.6, labels


@pytest.mark.parametrize("k", [1, 5, 12])
def test_knn_predicts_and_votes_like_scikit_learn_cosine_neighbours(k):
    train, train_labels = clustered(0, 120)
    query, _ = clustered(1, 300)
    ours = knn_probabilities(
        torch.from_numpy(train), torch.from_numpy(train_labels), torch.from_numpy(query), k, 4
    )
    ref = neighbors.KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    ref.fit(train, train_labels)
    np.testing.assert_array_equal(ours.argmax(1).numpy(), ref.predict(query))
    np.testing.assert_allclose(ours.numpy(), ref.predict_proba(query), atol=1e-12)


def test_knn_with_k_above_the_train_size_votes_over_all_of_it():
    train, labels = np.eye(3), np.array([0, 1, 1])
    shares = knn_probabilities(torch.from_numpy(train), torch.from_numpy(labels), torch.ones(2, 3), 10, 2)
    np.testing.assert_allclose(shares.numpy(), [[1 / 3, 2 / 3]] * 2)


def test_simpleshot_is_nearest_centroid_on_centred_normalised_features():
    train, train_labels = clustered(2, 150)
    query, _ = clustered(3, 300)
    mean = train.mean(0)

    def cl2n(x):
        x = x - mean
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ours = simpleshot_probabilities(
        torch.from_numpy(train), torch.from_numpy(train_labels), torch.from_numpy(query), 4
    ).numpy()
    ref = neighbors.NearestCentroid().fit(cl2n(train), train_labels)
    np.testing.assert_array_equal(ours.argmax(1), ref.predict(cl2n(query)))
    centroids = np.stack([cl2n(train)[train_labels == c].mean(0) for c in range(4)])
    squared = ((cl2n(query)[:, None, :] - centroids[None]) ** 2).sum(-1)
    softmax = np.exp(-squared) / np.exp(-squared).sum(1, keepdims=True)
    np.testing.assert_allclose(ours, softmax, rtol=1e-10)
    # centring matters: without it, nearest centroid on merely normalised features decides differently
    plain = neighbors.NearestCentroid().fit(
        train / np.linalg.norm(train, axis=1, keepdims=True), train_labels
    )
    assert (plain.predict(query / np.linalg.norm(query, axis=1, keepdims=True)) != ours.argmax(1)).any()


def test_simpleshot_never_predicts_a_class_absent_from_the_train_subset():
    train, labels = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 2])
    probabilities = simpleshot_probabilities(
        torch.from_numpy(train), torch.from_numpy(labels), torch.tensor([[0.5, 0.4], [-1.0, 3.0]]), 3
    )
    assert probabilities[:, 1].eq(0).all() and torch.allclose(probabilities.sum(1), torch.ones(2).double())


def test_nll_equals_scikit_learn_log_loss():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(200, 5)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 5, 200)
    assert negative_log_likelihood(labels, probabilities) == pytest.approx(
        sk_metrics.log_loss(labels, probabilities, labels=range(5)), rel=1e-12
    )
    hard = np.eye(3)[[0, 1, 2, 0]]  # one confident mistake: clipped at float64 eps, as log_loss does
    assert negative_log_likelihood(np.array([0, 1, 2, 1]), hard) == pytest.approx(
        sk_metrics.log_loss([0, 1, 2, 1], hard, labels=range(3)), rel=1e-12
    )


def test_ece_and_reliability_bins_by_hand():
    # confidences 0.9, 0.8, 0.55, 0.95 (top label), correct: yes, no, yes, yes; with 15 bins of width 1/15,
    # 0.9 -> bin 13 ((13/15, 14/15]), 0.8 -> bin 11, 0.55 -> bin 8, 0.95 -> bin 14
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 1])
    bins = reliability_bins(labels, probabilities)
    assert [i for i, c in enumerate(bins["count"]) if c] == [8, 11, 13, 14]
    assert bins["correct"][11] == 0 and bins["confidence"][11] == pytest.approx(0.8)
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.55) + abs(1 - 0.95)) / 4
    assert expected_calibration_error(bins) == pytest.approx(expected)
    # two examples in one bin: |mean accuracy - mean confidence| weighted by the bin's share
    two = reliability_bins(np.array([0, 1]), np.array([[0.71, 0.29], [0.72, 0.28]]))
    assert expected_calibration_error(two) == pytest.approx(abs(0.5 - 0.715))
    # edges: confidence exactly 1 goes to the last bin, 0.5 to (7/15, 8/15]
    edge = reliability_bins(np.array([0, 0]), np.array([[1.0, 0.0], [0.5, 0.5]]))
    assert edge["count"][14] == 1 and edge["count"][7] == 1 and sum(edge["count"]) == 2


def test_evaluation_records_per_image_correctness_in_test_order():
    probabilities = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    test = evaluate_probabilities(np.array([0, 0, 0]), probabilities, 2)
    assert test.correct == "101" and parse_correctness(test.correct).tolist() == [True, False, True]
    assert test.metrics.accuracy == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), classes=3, per_class=30, size=32, seed=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: the features are extracted once."""
    return tmp_path_factory.mktemp("cache")


def baseline_config(root: Path, cache: Path, method: str, **fields) -> TrialConfig:
    train = TrainSettings(image_cache_size=32, device="cpu")
    return TrialConfig(
        method=method,
        backbone="tiny_clip",
        dataset="synthetic",
        root=root,
        cache_dir=cache,
        train=train,
        **fields,
    )


@pytest.mark.parametrize("method,fields", [("knn", {"k": 3, "shots": 4}), ("simpleshot", {})])
def test_baseline_trial_equals_scikit_learn_on_the_cached_features(
    synthetic, cache, tmp_path, method, fields
):
    cfg = baseline_config(synthetic, cache, method, seed=2, **fields)
    reports = []
    result = run_trial(cfg, report=lambda m, s: reports.append((m, s)), out_dir=tmp_path / "out")
    data = trial_data(cfg)
    features = probe_features(cfg, data, torch.device("cpu")).features.astype(np.float64)
    x, y = features[data.train], data.labels(data.train)
    if method == "knn":
        ref = neighbors.KNeighborsClassifier(n_neighbors=3, metric="cosine", algorithm="brute").fit(x, y)
        transform = np.asarray
    else:
        mean = x.mean(0)

        def transform(z):
            return (z - mean) / np.linalg.norm(z - mean, axis=1, keepdims=True)

        ref = neighbors.NearestCentroid().fit(transform(x), y)
    test_pred = ref.predict(transform(features[data.test]))
    val_pred = ref.predict(transform(features[data.val]))
    assert result.test_acc == pytest.approx(float((test_pred == data.labels(data.test)).mean()))
    assert result.best_val_acc == pytest.approx(float((val_pred == data.labels(data.val)).mean()))
    correct = (test_pred == data.labels(data.test)).astype(int)
    assert result.test_correct == "".join(map(str, correct))
    assert result.trainable_params == 0 and result.steps == 0 and np.isfinite(result.test_nll)
    assert reports == [
        ({"step": 0, "val_acc": result.best_val_acc, "best_val_acc": result.best_val_acc}, None)
    ]
    assert json.loads(json.dumps(result.to_dict()))["test_reliability"]["count"][-1] >= 0
    assert (tmp_path / "out" / "trial_manifest.csv").is_file()


def test_probe_trial_reports_nll_and_ece_of_its_test_probabilities(synthetic, cache):
    cfg = baseline_config(synthetic, cache, "linear_probe", lr=0.1, seed=1, shots=5)
    cfg = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"probe_epochs": 5, "warmup_steps": 1})}
    )
    result = run_trial(cfg)
    assert len(result.test_correct) == len(trial_data(cfg).test)
    assert parse_correctness(result.test_correct).mean() == pytest.approx(result.test_acc)
    assert result.test_nll > 0 and 0 <= result.test_ece <= 1
    assert sum(result.test_reliability["count"]) == len(result.test_correct)
    assert {"test_nll", "test_ece"} <= set(result.metrics())


def test_trial_config_asks_lr_of_trained_methods_and_k_of_knn_only(tmp_path):
    with pytest.raises(ValueError, match="knn: expected k"):
        baseline_config(tmp_path, tmp_path, "knn")
    with pytest.raises(ValueError, match="simpleshot: expected no lr"):
        baseline_config(tmp_path, tmp_path, "simpleshot", lr=0.1)
    with pytest.raises(ValueError, match="linear_probe: expected an lr"):
        baseline_config(tmp_path, tmp_path, "linear_probe")
    with pytest.raises(ValueError, match="lora: expected no k"):
        baseline_config(tmp_path, tmp_path, "lora", lr=0.1, k=3)


def test_cli_train_runs_a_baseline_and_names_a_missing_k(synthetic, cache):
    from typer.testing import CliRunner

    from cytotune.cli import app

    args = ["train", "--method", "knn", "--backbone", "tiny_clip", "--dataset", "synthetic"]
    args += ["--root", str(synthetic), "--device", "cpu", "--cache-dir", str(cache)]
    result = CliRunner().invoke(app, [*args, "--k", "3"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the table title wraps on a narrow terminal
    assert "knn tiny_clip on synthetic, k=3 seed=0" in text and "test_ece" in text
    missing = CliRunner().invoke(app, args)
    assert missing.exit_code != 0 and "knn: expected k" in str(missing.exception)
