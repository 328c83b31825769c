"""The whole model on the Triton path against the reference, in bf16 on a GPU (``-m gpu``).

The 2x-PyTorch-error rule of the kernel tests, applied to the model: with the same weights and input, the Triton
path under bf16 autocast may be at most twice as far from the fp32 reference as PyTorch's own bf16 autocast run,
for both outputs and for the gradients of one training step (forward + MTL loss + backward).
"""

from __future__ import annotations

import copy

import pytest
import torch

import fastmtl
from fastmtl.losses import MTLLoss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
]
IMG = 224  # the paper's ISIC size: every DFE level and Swin stage at its real shape
BATCH = 2


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _run(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, amp: bool):
    """Outputs and parameter gradients of one training step, all as fp32."""
    loss_fn = MTLLoss(seg_classes=1, alpha=0.25).cuda()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    loss_fn(out, mask, labels)["loss"].backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return out.seg_logits.float(), out.cls_logits.float(), grads


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(BATCH, 3, IMG, IMG, device="cuda", generator=gen)
    mask = (torch.rand(BATCH, IMG, IMG, device="cuda", generator=gen) > 0.7).float()
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2], device="cuda"), 3).float()
    return x, mask, labels


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_triton_bf16_within_twice_torch_bf16_error(batch, train: bool) -> None:
    torch.manual_seed(0)
    ref = fastmtl.create_model("resformer_mtl", img_size=IMG, kernels="reference", drop_path_rate=0.0).cuda()
    fast = copy.deepcopy(ref)
    fastmtl.set_kernel_backend(fast, "triton")
    for m in (ref, fast):
        m.train(train)
    x, mask, labels = batch
    exact = _run(copy.deepcopy(ref), x, mask, labels, amp=False)
    torch_bf16 = _run(copy.deepcopy(ref), x, mask, labels, amp=True)
    ours = _run(fast, x, mask, labels, amp=True)
    for name, e, t, o in zip(("seg_logits", "cls_logits"), exact[:2], torch_bf16[:2], ours[:2]):
        assert _max_err(o, e) <= 2 * _max_err(t, e) + 1e-3, f"{name}: {_max_err(o, e)} vs PyTorch {_max_err(t, e)}"
    # Gradients: the worst parameter tensor, each error relative to that tensor's scale.
    worst = []
    for n, e in exact[2].items():
        scale = e.abs().max().item() + 1e-12
        o_err, t_err = _max_err(ours[2][n], e) / scale, _max_err(torch_bf16[2][n], e) / scale
        if o_err > 2 * t_err + 1e-2:
            worst.append(f"{n}: {o_err:.3g} vs PyTorch {t_err:.3g}")
    assert not worst, "gradients beyond 2x PyTorch's bf16 error: " + "; ".join(worst[:10])
