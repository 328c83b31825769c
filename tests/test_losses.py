"""Tests of fastmtl.losses: hand-computed values, torch equivalence, MTLLoss composition, gradients, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fastmtl.losses import (
    MTLLoss,
    binary_dice_loss,
    class_weights_from_labels,
    focal_loss,
    multiclass_dice_loss,
    weighted_multilabel_loss,
)
from fastmtl.output import MTLOutput

LN3 = math.log(3.0)


def _quarter_logits() -> torch.Tensor:
    """(1, 2, 1, 2) logits whose softmax is p = (1/4, 3/4) at both pixels."""
    return torch.tensor([[[[0.0, 0.0]], [[LN3, LN3]]]])


def test_binary_dice_hand_computed():
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[1, 0], [0, 0]]])
    # tp = 0.5, sum p = 2, sum t = 1 -> 1 - 1 / 3
    assert binary_dice_loss(logits, target, eps=0.0).item() == pytest.approx(2 / 3, abs=1e-6)
    perfect = torch.where(target.bool(), 20.0, -20.0).unsqueeze(1).float()
    assert binary_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_binary_dice_pools_the_batch_and_accepts_channel_target():
    logits = torch.zeros(2, 1, 2, 2)  # p = 0.5
    target = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])  # full mask, empty mask
    # pooled: tp = 2, sum p = 4, sum t = 4 -> 0.5 (per-image mean would be (1/3 + 1) / 2)
    assert binary_dice_loss(logits, target, eps=0.0).item() == pytest.approx(0.5, abs=1e-6)
    assert binary_dice_loss(logits, target.unsqueeze(1), eps=0.0).item() == pytest.approx(0.5, abs=1e-6)


def test_multiclass_dice_hand_computed():
    target = torch.tensor([[[0, 1]]])
    # class 0: tp 1/4, sum p 1/2, sum t 1 -> 1 - 0.5/1.5; class 1: tp 3/4, sum p 3/2, sum t 1 -> 1 - 1.5/2.5
    expected = ((1 - 0.5 / 1.5) + (1 - 1.5 / 2.5)) / 2
    assert multiclass_dice_loss(_quarter_logits(), target, eps=0.0).item() == pytest.approx(expected, abs=1e-6)


def test_multiclass_dice_matches_per_class_reference():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 4, 5, 6), torch.randint(0, 4, (3, 5, 6))
    probs, onehot = logits.softmax(1), nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    eps = 1e-5
    tp, denom = (probs * onehot).sum((0, 2, 3)), probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    ref = [1 - (2 * tp[c] + eps) / (denom[c] + eps) for c in range(4)]
    assert multiclass_dice_loss(logits, target).item() == pytest.approx(torch.stack(ref).mean().item(), rel=1e-5)


def test_focal_hand_computed_and_clamped():
    target = torch.tensor([[[0, 1]]])
    # p = (1/4, 3/4) at both pixels; pixel 0 is class 0 (wrong), pixel 1 is class 1 (right)
    expected = (2 * (9 / 16) * math.log(4) + 2 * (1 / 16) * math.log(4 / 3)) / 4
    assert focal_loss(_quarter_logits(), target).item() == pytest.approx(expected, rel=1e-5)
    confident_wrong = torch.tensor([[[[100.0]], [[-100.0]]]])  # p clamped to 1 - 1e-3 / 1e-3
    value = focal_loss(confident_wrong, torch.tensor([[[1]]])).item()
    assert value == pytest.approx((1 - 1e-3) ** 2 * -math.log(1e-3), rel=1e-4)


@pytest.mark.parametrize("use_weight", [False, True])
def test_weighted_multilabel_equals_torch_soft_margin(use_weight):
    torch.manual_seed(1)
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.randint(0, 2, (6, 3)).float()
    weight = torch.tensor([1.78, 2.62, 0.49]) if use_weight else None
    ours = weighted_multilabel_loss(logits, labels, weight)
    ref = nn.MultiLabelSoftMarginLoss(weight=weight)(logits, labels)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


def test_class_weights_from_isic_counts():
    labels = torch.zeros(2000, 3)
    labels[:374, 0] = 1  # melanoma
    labels[374:628, 1] = 1  # seborrheic keratosis
    labels[628:, 2] = 1  # nevus (1372)
    weights = class_weights_from_labels(labels)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.tensor([2000 / 1122, 2000 / 762, 2000 / 4116]))
    assert [round(w, 2) for w in weights.tolist()] == [1.78, 2.62, 0.49]


def test_class_weights_errors():
    with pytest.raises(ValueError, match=r"class index \[1\]"):
        class_weights_from_labels([[1, 0], [1, 0]])
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        class_weights_from_labels(torch.ones(5))


def _batch(seg_classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    seg = torch.randn(2, seg_classes, 4, 4, generator=gen, requires_grad=True)
    cls = torch.randn(2, 3, generator=gen, requires_grad=True)
    mask = torch.randint(0, max(seg_classes, 2), (2, 4, 4), generator=gen)
    labels = torch.randint(0, 2, (2, 3), generator=gen).float()
    return seg, cls, mask, labels


def test_mtl_loss_binary_total_and_gradients():
    seg, cls, mask, labels = _batch(1)
    weights = torch.tensor([1.78, 2.62, 0.49])
    loss_fn = MTLLoss(seg_classes=1, alpha=0.25, class_weights=weights)
    out = loss_fn(MTLOutput(seg, cls), mask, labels)
    assert set(out) == {"loss", "seg", "cls"}
    torch.testing.assert_close(out["seg"], binary_dice_loss(seg, mask))
    torch.testing.assert_close(out["cls"], weighted_multilabel_loss(cls, labels, weights))
    torch.testing.assert_close(out["loss"], out["seg"] + 0.25 * out["cls"])
    out["loss"].backward()
    assert seg.grad.abs().sum() > 0 and cls.grad.abs().sum() > 0
    assert "class_weights" in dict(loss_fn.named_buffers())


def test_mtl_loss_multiclass_terms():
    seg, cls, mask, labels = _batch(4)
    out = MTLLoss(seg_classes=4)(MTLOutput(seg, cls), mask, labels)
    assert set(out) == {"loss", "seg", "cls", "dice", "focal"}
    torch.testing.assert_close(out["dice"], multiclass_dice_loss(seg, mask))
    torch.testing.assert_close(out["focal"], focal_loss(seg, mask))
    torch.testing.assert_close(out["seg"], out["dice"] + out["focal"])
    torch.testing.assert_close(out["loss"], out["seg"] + 0.25 * out["cls"])


def test_mtl_loss_single_task_models():
    seg, cls, mask, labels = _batch(1)
    loss_fn = MTLLoss()
    cls_only = loss_fn(MTLOutput(None, cls), None, labels)
    torch.testing.assert_close(cls_only["loss"], weighted_multilabel_loss(cls, labels))  # no alpha
    assert cls_only["seg"].item() == 0.0
    seg_only = loss_fn(MTLOutput(seg, None), mask, None)
    torch.testing.assert_close(seg_only["loss"], binary_dice_loss(seg, mask))
    assert seg_only["cls"].item() == 0.0


@pytest.mark.parametrize("seg_classes", [1, 4])
def test_mtl_loss_has_mask_drops_samples(seg_classes):
    seg, cls, mask, labels = _batch(seg_classes)
    loss_fn = MTLLoss(seg_classes=seg_classes)
    garbage = mask.clone()
    garbage[1] = 255  # placeholder mask of the image without annotation
    partial = loss_fn(MTLOutput(seg, cls), garbage, labels, has_mask=torch.tensor([True, False]))
    first = loss_fn.seg_loss(seg[:1], mask[:1])  # the same loss on the annotated image alone
    torch.testing.assert_close(partial["seg"], first["seg"])
    none = loss_fn(MTLOutput(seg, cls), garbage, labels, has_mask=torch.tensor([False, False]))
    assert none["seg"].item() == pytest.approx(0.0, abs=1e-7)
    none["loss"].backward()
    assert seg.grad is not None and seg.grad.abs().sum() == 0 and cls.grad.abs().sum() > 0


def test_mtl_loss_errors():
    seg, cls, mask, labels = _batch(1)
    loss_fn = MTLLoss()
    with pytest.raises(ValueError, match=r"mask shape \(2, 3, 4\)"):
        loss_fn(MTLOutput(seg, cls), mask[:, :3], labels)
    with pytest.raises(ValueError, match="seg_classes=1"):
        loss_fn(MTLOutput(torch.randn(2, 4, 4, 4), cls), mask, labels)
    with pytest.raises(ValueError, match=r"labels shape \(2, 2\)"):
        loss_fn(MTLOutput(seg, cls), mask, labels[:, :2])
    with pytest.raises(ValueError, match="mask is None"):
        loss_fn(MTLOutput(seg, cls), None, labels)
    with pytest.raises(ValueError, match=r"has_mask must have shape \(2,\)"):
        loss_fn(MTLOutput(seg, cls), mask, labels, has_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="class_weights shape"):
        MTLLoss(class_weights=[1.0, 2.0])(MTLOutput(seg, cls), mask, labels)
    with pytest.raises(ValueError, match="neither"):
        loss_fn(MTLOutput(None, None), mask, labels)


@settings(max_examples=25, deadline=None)
@given(
    seg_classes=st.sampled_from([1, 3]),
    scale=st.floats(0.0, 30.0),
    seed=st.integers(0, 2**16),
)
def test_losses_bounded_property(seg_classes, scale, seed):
    seg, cls, mask, labels = _batch(seg_classes, seed)
    seg = seg.detach() * scale
    out = MTLLoss(seg_classes=seg_classes)(MTLOutput(seg, cls.detach() * scale), mask, labels)
    assert all(torch.isfinite(v) and v >= 0 for v in out.values())
    dice = out["seg"] if seg_classes == 1 else out["dice"]
    assert 0.0 <= dice.item() <= 1.0


def test_has_label_drops_unlabelled_images_from_the_classification_loss() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.1, -2.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    only_first = weighted_multilabel_loss(logits, labels, has_label=torch.tensor([True, False]))
    torch.testing.assert_close(only_first, weighted_multilabel_loss(logits[:1], labels[:1]))
    none = weighted_multilabel_loss(logits, labels, has_label=torch.tensor([False, False]))
    none.backward()
    assert none.item() == 0.0 and logits.grad is not None
