"""Classification metrics (lrfer.engine.metrics): the confusion matrix, accuracy, balanced accuracy and the
look-up of a named validation metric (what model selection and the sweeps' objective read)."""

from __future__ import annotations

import pytest
import torch

from lrfer.core.errors import UserError
from lrfer.engine.metrics import check_metric_name, confusion_matrix, metrics_from_confusion, named_metric


def test_the_confusion_matrix_counts_true_classes_in_rows_and_predictions_in_columns():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(preds, labels, num_classes=4)
    expected = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    assert cm.dtype == torch.int64 and torch.equal(cm, expected)
    # int32 / uint8 inputs are counted the same way
    assert torch.equal(confusion_matrix(preds.to(torch.uint8), labels.int(), 4), expected)


def test_accuracy_is_the_diagonal_share_and_balanced_accuracy_the_mean_recall_of_present_classes():
    # class 0: 8 of 10 right; class 1: 1 of 2 right; class 2 absent (no true samples, but predicted once)
    cm = torch.tensor([[8, 1, 1], [1, 1, 0], [0, 0, 0]])
    m = metrics_from_confusion(cm)
    assert m["n"] == 12 and isinstance(m["n"], int)
    assert m["acc"] == pytest.approx(9 / 12, abs=1e-12)
    assert m["balanced_acc"] == pytest.approx((0.8 + 0.5) / 2, abs=1e-12)  # the absent class is not a 0
    assert isinstance(m["acc"], float) and isinstance(m["balanced_acc"], float)


def test_a_class_with_a_single_sample_counts_in_the_balanced_accuracy():
    cm = torch.tensor([[3, 1], [1, 0]])  # class 1 has one true sample, predicted wrong: recall 0
    assert metrics_from_confusion(cm)["balanced_acc"] == pytest.approx((0.75 + 0.0) / 2)


def test_an_empty_confusion_matrix_gives_zeros_not_nan():
    assert metrics_from_confusion(torch.zeros(3, 3, dtype=torch.int64)) == {
        "acc": 0.0,
        "balanced_acc": 0.0,
        "n": 0,
    }


def test_metrics_of_large_counts_are_exact():
    cm = torch.tensor([[2**40, 1], [0, 2**40 - 1]])
    m = metrics_from_confusion(cm)
    assert m["n"] == 2**41
    assert m["acc"] == (2**41 - 1) / 2**41


ROWS = {
    "x1": {"acc": 0.9, "balanced_acc": 0.8, "n": 10, "confusion": [[1]]},
    "x4": {"acc": 0.5, "balanced_acc": 0.4, "rrn_acc": 0.7, "n": 10, "confusion": [[1]]},
}


def test_a_metric_without_degradation_is_its_mean_over_the_degradations():
    assert named_metric(ROWS, "acc") == pytest.approx(0.7)
    assert named_metric(ROWS, "balanced_acc") == pytest.approx(0.6)
    assert named_metric({"x1": {"acc": 0.25}}, "acc") == 0.25


def test_a_degradation_and_metric_name_picks_that_row():
    assert named_metric(ROWS, "x4/acc") == 0.5
    assert named_metric(ROWS, "x1/balanced_acc") == 0.8
    assert named_metric(ROWS, "x4/rrn_acc") == 0.7


def test_a_metric_missing_at_any_degradation_is_one_line_listing_what_exists():
    with pytest.raises(
        UserError, match=r"trainer\.monitor='rrn_acc': the validation reports no 'rrn_acc'"
    ) as err:
        named_metric(ROWS, "rrn_acc", "trainer.monitor")  # x1 has none: a mean over some rows would mislead
    assert "it reports ['acc', 'balanced_acc', 'rrn_acc']" in str(err.value)
    for name in ("n", "x1/confusion", "x1/nope"):
        with pytest.raises(UserError, match="the validation reports no"):
            named_metric(ROWS, name)
    with pytest.raises(UserError, match="reports no"):
        named_metric({}, "acc")
    with pytest.raises(UserError, match=r"^metric='nope': the validation reports no 'nope'"):
        named_metric(ROWS, "nope")  # without a setting's name the message calls it "metric"


def test_a_malformed_or_unknown_metric_name_is_refused_at_start_up():
    check_metric_name("acc", ["x1"], "trainer.monitor")
    check_metric_name("x4/acc", ["x1", "x4"], "trainer.monitor")
    with pytest.raises(UserError, match=r"trainer\.monitor=x8/acc: x8 is not a validated degradation"):
        check_metric_name("x8/acc", ["x1", "x4"], "trainer.monitor")
    for bad in ("x4/", "a/b/acc", ""):
        with pytest.raises(UserError, match=r"give <metric> \(e\.g\. acc\) or <degradation>/<metric>"):
            check_metric_name(bad, ["x4"], "objective")
    with pytest.raises(UserError, match=r"^trainer\.monitor=x8/acc: x8 is not a validated degradation"):
        named_metric(ROWS, "x8/acc", "trainer.monitor")  # the message names the setting that asked
