"""Trainer parts without data or backbones: schedule, metrics, best tracker, guard, head, batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cytotune.errors import CytotuneError
from cytotune.train.batches import BatchStream
from cytotune.train.best import BestTracker
from cytotune.train.guard import ensure_finite_loss
from cytotune.train.head import AdamW, HeadSchedule, augment, fit_linear_heads
from cytotune.train.metrics import classification_metrics
from cytotune.train.result import TrialResult
from cytotune.train.schedule import warmup_cosine_lr, warmup_cosine_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    lr = [warmup_cosine_lr(s, base_lr=1.0, total_steps=110, warmup_steps=10, min_lr=1e-6) for s in range(111)]
    assert lr[0] == pytest.approx(0.1)
    assert lr[4] == pytest.approx(0.5)
    assert lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.5 + 0.5e-6)
    assert lr[110] == pytest.approx(1e-6)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))


def test_schedule_table_equals_the_schedule_for_each_base_rate():
    table = warmup_cosine_table(
        torch.tensor([1e-2, 3e-4], dtype=torch.float64), total_steps=40, warmup_steps=7, min_lr=1e-6
    )
    for k, base in enumerate((1e-2, 3e-4)):
        expected = [
            warmup_cosine_lr(s, base_lr=base, total_steps=40, warmup_steps=7, min_lr=1e-6) for s in range(40)
        ]
        assert table[:, k].tolist() == pytest.approx(expected, rel=1e-12)
    no_warmup = warmup_cosine_table(torch.tensor([0.3]), total_steps=5, warmup_steps=0, min_lr=0.0)
    assert no_warmup[0, 0].item() == pytest.approx(0.3)


def test_schedule_without_warmup_starts_at_base_lr():
    assert warmup_cosine_lr(0, base_lr=0.3, total_steps=5, warmup_steps=0, min_lr=0.0) == pytest.approx(0.3)


def test_metrics_on_a_hand_counted_example():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 0, 2, 1])
    m = classification_metrics(labels, preds, 4)
    assert m.accuracy == pytest.approx(5 / 8)
    assert m.confusion == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert m.per_class_recall[:3] == pytest.approx([0.75, 0.5, 0.5])
    assert math.isnan(m.per_class_recall[3])
    assert m.balanced_accuracy == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    f1 = [2 * 0.75 * 0.75 / 1.5, 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5), 2 * 1.0 * 0.5 / 1.5]
    assert m.macro_f1 == pytest.approx(sum(f1) / 3)


def test_metrics_agree_with_scikit_learn_when_it_is_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    m = classification_metrics(labels, preds, 5)
    assert m.balanced_accuracy == pytest.approx(metrics.balanced_accuracy_score(labels, preds))
    assert m.macro_f1 == pytest.approx(metrics.f1_score(labels, preds, average="macro"))
    assert m.confusion == metrics.confusion_matrix(labels, preds, labels=range(5)).tolist()


def test_best_tracker_keeps_the_first_strictly_best_evaluation():
    tracker = BestTracker()
    weights = torch.zeros(2)
    sequence = [(10, 0.50), (20, 0.70), (30, 0.65), (40, 0.70), (50, 0.60)]
    improved = []
    for step, acc in sequence:
        weights.fill_(step)
        improved.append(tracker.update(step, acc, lambda: {"w": weights}))
    assert improved == [True, True, False, False, False]
    assert (tracker.step, tracker.value) == (20, 0.70)
    assert tracker.state["w"].tolist() == [20.0, 20.0]
    restored = BestTracker()
    restored.load_state_dict(tracker.state_dict())
    assert (restored.step, restored.value, restored.state["w"].tolist()) == (20, 0.70, [20.0, 20.0])


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf")])
def test_guard_names_the_step_of_a_non_finite_loss(loss):
    with pytest.raises(CytotuneError, match="at step 17"):
        ensure_finite_loss(loss, 17, "trial x")
    ensure_finite_loss(0.3, 17, "trial x")


def test_closed_form_adamw_equals_torch_adamw_on_a_linear_head():
    torch.manual_seed(0)
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randint(0, 3, (9,))
    linear = torch.nn.Linear(6, 3).double()
    params = torch.cat([linear.weight.detach(), linear.bias.detach()[:, None]], 1).clone()
    reference = torch.optim.AdamW(linear.parameters(), lr=0.1, weight_decay=0.05)
    ours = AdamW(params, 0.05)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    for step in range(25):
        lr = 0.1 / (step + 1)
        reference.param_groups[0]["lr"] = lr
        reference.zero_grad()
        torch.nn.functional.cross_entropy(linear(x), y).backward()
        reference.step()
        grad = (torch.softmax(augment(x) @ params.T, 1) - onehot).T @ augment(x) / len(x)
        ours.step(grad, torch.tensor(lr, dtype=torch.float64))
    torch.testing.assert_close(params[:, :-1], linear.weight.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(params[:, -1], linear.bias.detach(), rtol=1e-12, atol=1e-14)


def _separable(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(4, 16) * 6
    y = torch.arange(4).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), 16, generator=g), y


def _schedule(**overrides) -> HeadSchedule:
    settings = dict(lr=1e-2, weight_decay=1e-2, batch_size=8, epochs=20, warmup_steps=5, min_lr=1e-6)
    return HeadSchedule(**{**settings, **overrides})


def _fit(features, labels, n_train, schedules, seeds, **kwargs):
    rows = torch.arange(len(labels))
    train, val = rows[:n_train].repeat(len(seeds), 1), rows[n_train:].repeat(len(seeds), 1)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return fit_linear_heads(features, labels, train, val, 4, schedules, generators, **kwargs)


def _split_data() -> tuple[torch.Tensor, torch.Tensor]:
    (tx, ty), (vx, vy) = _separable(20, 0), _separable(10, 1)
    return torch.cat([tx, vx]), torch.cat([ty, vy])


def test_linear_head_reaches_100_percent_on_separable_features():
    features, labels = _split_data()
    evaluations = []
    (fit,) = _fit(features, labels, 80, [_schedule()], [0], on_eval=lambda *a: evaluations.append(a))
    assert fit.best_val_acc == 1.0
    assert ((features[80:] @ fit.weight.T + fit.bias).argmax(1) == labels[80:]).all()
    assert fit.steps == 20 * 10 == evaluations[-1][1]
    assert [e[1] for e in evaluations] == list(range(10, 201, 10))
    assert evaluations[-1][2] < evaluations[0][2]


def test_linear_head_returns_the_best_validation_epoch_not_the_last():
    # val labels rotated by one class: the better the head learns the train clusters, the worse val gets
    features, labels = _split_data()
    labels[80:] = (labels[80:] + 1) % 4
    constant = dict(lr=1e-2, warmup_steps=0, min_lr=1e-2)  # so an e-epoch run is the first e epochs of more
    evaluations = []
    (fit,) = _fit(
        features, labels, 80, [_schedule(**constant)], [0], on_eval=lambda *a: evaluations.append(a)
    )
    vals = [e[3] for e in evaluations]
    best_epoch = vals.index(max(vals)) + 1
    assert fit.best_val_acc == max(vals) > vals[-1] and best_epoch < 20
    assert fit.best_step == 10 * best_epoch and fit.steps == 200
    (upto_best,) = _fit(features, labels, 80, [_schedule(epochs=best_epoch, **constant)], [0])
    assert torch.equal(fit.weight, upto_best.weight) and torch.equal(fit.bias, upto_best.bias)


def test_linear_head_is_deterministic_and_seeded():
    features, labels = _split_data()
    schedule = _schedule(epochs=3)
    (a,), (b,), (c,) = (_fit(features, labels, 80, [schedule], [seed]) for seed in (0, 0, 1))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


def test_heads_trained_together_equal_heads_trained_alone():
    features, labels = _split_data()
    schedules, seeds = [_schedule(lr=1e-2), _schedule(lr=3e-3), _schedule(lr=1e-3)], [0, 1, 2]
    together = _fit(features, labels, 80, schedules, seeds)
    for schedule, seed, packed in zip(schedules, seeds, together, strict=True):
        (alone,) = _fit(features, labels, 80, [schedule], [seed])
        torch.testing.assert_close(packed.weight, alone.weight, rtol=1e-5, atol=1e-6)
        assert (packed.best_val_acc, packed.best_step) == (alone.best_val_acc, alone.best_step)


def test_linear_head_raises_on_a_nan_loss_naming_the_step():
    features, labels = _split_data()
    features[3, 2] = float("nan")
    with pytest.raises(CytotuneError, match=r"probe q: training loss is nan at step 10"):
        _fit(features, labels, 80, [_schedule()], [0], where=["probe q"])


def test_batch_stream_covers_every_example_each_epoch_and_resumes():
    stream = BatchStream(10, 4, torch.Generator().manual_seed(0))
    first = torch.cat([stream.next() for _ in range(5)])
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    generator = torch.Generator().manual_seed(1)
    original = BatchStream(7, 3, generator)
    original.next()
    saved, saved_rng = original.state_dict(), generator.get_state()
    expected = [original.next() for _ in range(6)]
    clone_gen = torch.Generator()
    clone = BatchStream(7, 3, clone_gen)
    clone.load_state_dict(saved)
    clone_gen.set_state(saved_rng)
    assert all(torch.equal(a, clone.next()) for a in expected)
    assert len(BatchStream(3, 32, torch.Generator()).next()) == 3


def test_trial_result_metrics_are_the_scalars():
    result = TrialResult(
        0.9, 40, 0.8, 0.75, 0.7, [0.5, 1.0], [[1, 1], [0, 2]], ["a", "b"], 10, 100, 5.0, 1.0, 2.0, 50
    )
    assert result.metrics()["test_acc"] == 0.8 and "confusion_matrix" not in result.metrics()
    assert result.to_dict()["classes"] == ["a", "b"]
