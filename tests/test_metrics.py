"""Tests of fastmtl.metrics: hand-computed DSC/JI, the skipping rule, sklearn agreement, meter merging, errors."""

import math
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, multilabel_confusion_matrix, recall_score, roc_auc_score

from fastmtl.metrics import (
    ClassificationMeter,
    SegmentationMeter,
    classification_metrics,
    default_class_names,
    default_seg_class_names,
    format_table,
    segmentation_metrics,
)

ON, OFF = 5.0, -5.0
NAMES = ("melanoma", "seborrheic_keratosis", "nevus")  # one dataset's class names, always passed explicitly


def _binary_logits(pred: list) -> torch.Tensor:
    """Nested 0/1 lists of shape (B, H, W) -> (B, 1, H, W) logits that binarise back to them."""
    return torch.where(torch.tensor(pred).bool(), ON, OFF).unsqueeze(1)


def _class_logits(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) class ids -> (B, C, H, W) logits whose argmax is pred."""
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float() * 4.0


def test_binary_dsc_ji_hand_computed():
    # prediction: top row; truth: left column -> TP 1, FP 1, FN 1
    out = segmentation_metrics(_binary_logits([[[1, 1], [0, 0]]]), torch.tensor([[[1, 0], [1, 0]]]))
    assert out["dsc"] == pytest.approx(50.0)
    assert out["ji"] == pytest.approx(100 / 3)
    assert out["dsc_lesion"] == out["dsc"] and out["global_dice"] == pytest.approx(50.0)
    assert out["n_seg_images"] == 1 and out["n_present_lesion"] == 1


def test_empty_truth_is_skipped_but_counts_in_global_dice():
    pred = _binary_logits([[[1, 1], [0, 0]], [[1, 1], [1, 1]], [[0, 0], [0, 0]]])
    truth = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]])  # images 2 and 3: no lesion
    out = segmentation_metrics(pred, truth)
    assert out["dsc"] == pytest.approx(50.0)  # only image 1 counts
    assert out["n_present_lesion"] == 1 and out["n_seg_images"] == 3
    # pooled: TP 1, FP 1 + 4, FN 1 -> 2 / 8
    assert out["global_dice"] == pytest.approx(25.0)
    nothing = segmentation_metrics(pred[2:], truth[2:])
    assert math.isnan(nothing["dsc"]) and math.isnan(nothing["global_dice"])


def test_multiclass_per_class_and_mean_over_present_classes():
    truth = torch.tensor([[[0, 1, 2, 2]]])  # class 3 (ped) absent everywhere
    pred = torch.tensor([[[0, 1, 2, 1]]])
    out = segmentation_metrics(_class_logits(pred, 4), truth, ("irf", "srf", "ped"))
    # irf: TP 1 FP 1 FN 0; srf: TP 1 FP 0 FN 1; both DSC 2/3, JI 1/2
    assert out["dsc_irf"] == pytest.approx(200 / 3) and out["dsc_srf"] == pytest.approx(200 / 3)
    assert out["ji_irf"] == pytest.approx(50.0)
    assert math.isnan(out["dsc_ped"]) and out["n_present_ped"] == 0
    assert out["dsc"] == pytest.approx(200 / 3) and out["ji"] == pytest.approx(50.0)


def test_segmentation_meter_has_mask_and_channel_mask():
    meter = SegmentationMeter(1)
    pred = _binary_logits([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    truth = torch.tensor([[[1, 0], [1, 0]], [[1, 1], [1, 1]]]).unsqueeze(1)  # (B, 1, H, W) accepted
    meter.update(pred, truth, has_mask=torch.tensor([True, False]))
    assert meter.compute()["dsc"] == pytest.approx(50.0) and meter.compute()["n_seg_images"] == 1


def test_meters_merge_to_single_pass_through_state():
    torch.manual_seed(0)
    seg, mask = torch.randn(6, 4, 8, 8), torch.randint(0, 4, (6, 8, 8))
    mask[0] = 0  # an image with no foreground at all
    cls, labels = torch.randn(30, 3), torch.randint(0, 2, (30, 3))
    whole_seg, whole_cls = SegmentationMeter(4), ClassificationMeter(NAMES)
    whole_seg.update(seg, mask)
    whole_cls.update(cls, labels)
    halves_seg, halves_cls = (
        [SegmentationMeter(4), SegmentationMeter(4)],
        [ClassificationMeter(NAMES), ClassificationMeter(NAMES)],
    )
    for i, (s, c) in enumerate(zip(halves_seg, halves_cls, strict=True)):
        s.update(seg[3 * i : 3 * i + 3], mask[3 * i : 3 * i + 3])
        c.update(cls[15 * i : 15 * i + 15], labels[15 * i : 15 * i + 15])
    # as all_gather_object would carry them: pickled plain states
    seg_states = [pickle.loads(pickle.dumps(m.to_state())) for m in halves_seg]
    cls_states = [pickle.loads(pickle.dumps(m.to_state())) for m in halves_cls]
    merged_seg = SegmentationMeter.from_state(seg_states[0]).merge(SegmentationMeter.from_state(seg_states[1]))
    merged_cls = ClassificationMeter.from_state(cls_states[0]).merge(ClassificationMeter.from_state(cls_states[1]))
    _assert_same(merged_seg.compute(), whole_seg.compute())
    _assert_same(merged_cls.compute(), whole_cls.compute())


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == pytest.approx(b[key]), key


def test_classification_hand_computed():
    logits = torch.tensor([[2.0, -2.0], [2.0, 2.0], [-2.0, 0.0], [-2.0, -2.0]])  # logit 0 -> p 0.5 -> negative
    labels = torch.tensor([[1, 0], [0, 1], [0, 1], [1, 0]])
    out = classification_metrics(logits, labels, class_names=("a", "b"))
    # a: TP 1 FP 1 FN 1 TN 1; b: TP 1 FP 0 FN 1 TN 2 -> micro TP 2 TN 3 FP 1 FN 2
    assert (out["tp"], out["tn"], out["fp"], out["fn"]) == (2, 3, 1, 2)
    assert (out["tp_b"], out["tn_b"], out["fp_b"], out["fn_b"]) == (1, 2, 0, 1)
    assert out["acc"] == pytest.approx(62.5) and out["sen"] == pytest.approx(50.0)
    assert out["spe"] == pytest.approx(75.0)
    assert out["acc_a"] == pytest.approx(50.0) and out["spe_b"] == pytest.approx(100.0)
    assert out["auc_a"] == pytest.approx(50.0) and out["auc_b"] == pytest.approx(100.0)


def test_classification_agrees_with_sklearn():
    torch.manual_seed(3)
    logits, labels = torch.randn(40, 3) * 2, torch.randint(0, 2, (40, 3))
    out = classification_metrics(logits, labels, NAMES)
    y, pred = labels.numpy(), (torch.sigmoid(logits) > 0.5).numpy().astype(int)
    assert out["acc"] == pytest.approx(100 * accuracy_score(y.ravel(), pred.ravel()))
    assert out["sen"] == pytest.approx(100 * recall_score(y.ravel(), pred.ravel()))
    assert out["spe"] == pytest.approx(100 * recall_score(y.ravel(), pred.ravel(), pos_label=0))
    confusion = multilabel_confusion_matrix(y, pred)  # (K, 2, 2): [[tn, fp], [fn, tp]]
    for k, name in enumerate(NAMES):
        assert out[f"acc_{name}"] == pytest.approx(100 * accuracy_score(y[:, k], pred[:, k]))
        assert out[f"auc_{name}"] == pytest.approx(100 * roc_auc_score(y[:, k], torch.sigmoid(logits[:, k]).numpy()))
        assert [out[f"tn_{name}"], out[f"fp_{name}"], out[f"fn_{name}"], out[f"tp_{name}"]] == confusion[
            k
        ].ravel().tolist()
    aucs = [out[f"auc_{n}"] for n in NAMES]
    assert out["auc_mean"] == pytest.approx(sum(aucs) / 3)


def test_auc_nan_for_single_label_class_without_warnings():
    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 1]])  # seb. keratosis never positive, nevus always
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = classification_metrics(torch.randn(3, 3), labels, NAMES)
    assert math.isnan(out["auc_seborrheic_keratosis"]) and math.isnan(out["auc_nevus"])
    assert out["auc_mean"] == out["auc_melanoma"]
    assert math.isnan(out["sen_seborrheic_keratosis"])  # no positives: undefined, not an error


def test_default_names_are_generic():
    assert default_seg_class_names(1) == ("lesion",)
    assert default_seg_class_names(4) == ("class1", "class2", "class3")  # no dataset's names: RETOUCH names its own
    assert default_class_names(3) == ClassificationMeter(3).class_names == ("class0", "class1", "class2")
    out = classification_metrics(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[1, 0, 0]]))
    assert (out["tp_class0"], out["tn_class1"], out["fp_class2"]) == (1, 1, 1) and "tp_melanoma" not in out
    seg = segmentation_metrics(_class_logits(torch.tensor([[[0, 1], [2, 1]]]), 3), torch.tensor([[[0, 1], [2, 2]]]))
    assert seg["dsc_class1"] == pytest.approx(200 / 3) and seg["dsc_class2"] == pytest.approx(200 / 3)


def test_format_table():
    metrics = {
        **segmentation_metrics(_binary_logits([[[1, 1], [0, 0]]]), torch.tensor([[[1, 0], [1, 0]]])),
        **classification_metrics(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[1, 0, 0]]), NAMES),
        "loss": 0.5,
    }
    table = format_table(metrics)
    for text in ("Segmentation", "lesion", "50.00", "33.33", "Classification", "seborrheic_keratosis", "micro", "loss"):
        assert text in table
    assert "nan" in table  # AUC with a single sample
    assert "dsc_lesion" not in table  # per-class keys become table rows, not "Other" entries


def test_metric_errors():
    with pytest.raises(ValueError, match=r"mask shape \(1, 3, 2\)"):
        segmentation_metrics(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        SegmentationMeter(4).update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="needs 3 names"):
        SegmentationMeter(4, class_names=("a", "b"))
    with pytest.raises(ValueError, match=r"labels shape \(2, 2\)"):
        ClassificationMeter(NAMES).update(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        ClassificationMeter(3).update(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no images"):
        SegmentationMeter(1).compute()
    with pytest.raises(ValueError, match="cannot merge"):
        SegmentationMeter(1).merge(SegmentationMeter(4))


@settings(max_examples=30, deadline=None)
@given(data=st.lists(st.lists(st.booleans(), min_size=8, max_size=8), min_size=4, max_size=4), seed=st.integers(0, 99))
def test_dsc_ji_bounded_property(data, seed):
    truth = torch.tensor(data).view(2, 4, 4).long()
    logits = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    out = segmentation_metrics(logits, truth)
    for key in ("dsc", "ji", "global_dice"):
        assert math.isnan(out[key]) or 0.0 <= out[key] <= 100.0
    if not math.isnan(out["dsc"]):
        assert out["ji"] <= out["dsc"] + 1e-9  # JI = DSC / (2 - DSC) per image
