"""The training step without host round trips (``device_step = true``) and evaluation on the device.

The classic step (:func:`fastmtl.engine.train.loop.train_step`) reads every step's loss on the host to check it,
which waits for the device each step. :class:`DeviceStep` never waits:

- the poly learning rate is computed on the device from a device step counter and written into the
  optimizer's tensor learning rates (fused AdamW on CUDA reads them there; no recompilation, no copy);
- the loss terms are summed on the device and read (and checked for NaN / inf) every ``sync_every`` steps,
  before every checkpoint and at the end of an epoch;
- optionally the forward and loss run under ``torch.compile`` (``compile_mode = "reduce-overhead"`` adds CUDA
  graphs); a compile failure prints one line and the step carries on eagerly.

:func:`evaluate_split` runs a model over a :class:`~fastmtl.engine.train.device_loader.DeviceSplit` keeping every
per-image count on the device and reads them once at the end. It is not
:func:`fastmtl.engine.evaluate.loop.run_evaluation` because that loop reads each batch on the host (per-image records,
``has_mask.any()``, the loss as a float), which would make the host wait for the device every batch; instead it
fills the same :class:`~fastmtl.engine.evaluate.loop.EvalState` meters and ends through the same
:func:`~fastmtl.engine.evaluate.loop.sync_state` and ``EvalState.metrics``, so both give the same metric dict (tested
against the DataLoader validation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fastmtl.backend import kernel_layers, use_triton
from fastmtl.engine.evaluate.loop import EvalState, sync_state
from fastmtl.engine.train.device_loader import DeviceSplit, eval_batches
from fastmtl.engine.train.loop import NonFiniteLossError, StepContext
from fastmtl.engine.train.state import RunState
from fastmtl.layers.swin import WindowAttention
from fastmtl.metrics import ClassificationMeter, SegmentationMeter
from fastmtl.models.base import MTLModel

__all__ = [
    "DeviceStep",
    "evaluate_split",
    "layer_paths",
    "tensor_learning_rates",
    "with_kernel_fallback",
]

_ATTENTION = (WindowAttention,)


def tensor_learning_rates(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Turns every group's learning rate into a 0-d float32 tensor on ``device`` (kept across resumes: the
    checkpoint stores it as a number)."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        value = float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)
        group["lr"] = torch.tensor(value, dtype=torch.float32, device=device)


def with_kernel_fallback(model: MTLModel, device: torch.device, fn: Callable[[], Any], log, what: str) -> Any:
    """Runs ``fn()``; if it fails while ``model`` uses Triton kernels, switches the model to the PyTorch reference
    layers (printing one line; ``model.config`` says so too, and the checkpoints saved after) and runs it again.
    Other failures propagate."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - kernel build / launch errors have many types
        if not model.uses_triton(device):
            raise
        log(f"the Triton kernels failed in {what} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); "
            "using the PyTorch reference layers")  # fmt: skip
        model.set_backend("reference")
        return fn()


class DeviceStep:
    """Forward, loss, backward and optimizer step with the host never waiting on the device.

    Args:
        ctx: the run's model, optimizer and settings; the optimizer's learning rates become device tensors.
        base_lr: the poly schedule's base learning rate.
        total_steps: the schedule's length in steps.
        power: the schedule's exponent.
        global_step: steps done so far (a resumed run starts there).
        compile_mode: ``torch.compile`` mode for the forward and loss, or None for eager.
        log: where the compile fallback message goes.
        sync_every: the epoch loop reads the losses every this many steps (:meth:`read_due`).
    """

    def __init__(
        self,
        ctx: StepContext,
        *,
        base_lr: float,
        total_steps: int,
        power: float,
        global_step: int,
        compile_mode: str | None = None,
        log: Callable[[str], None] = print,
        sync_every: int = 1,
    ) -> None:
        device = ctx.world.device
        self.sync_every = sync_every
        self.ctx, self.base_lr, self.total, self.power, self.log = ctx, base_lr, total_steps, power, log
        self.step_t = torch.tensor(float(global_step), dtype=torch.float64, device=device)
        tensor_learning_rates(ctx.optimizer, device)
        self.sums: torch.Tensor | None = None  # (T,) loss terms summed since the last read
        self.names: list[str] = []
        self.pending = 0  # steps since the last read
        self.compiled = torch.compile(self._forward_loss, mode=compile_mode) if compile_mode else None
        self.compile_status = f"torch.compile(mode={compile_mode!r})" if compile_mode else "eager"
        self.marks: list[tuple[float, int]] = []  # (host time, global step) at each read: the device was done
        self.checked = False  # the first step has run (the fallbacks apply only to it)

    def _forward_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        with ctx.autocast():
            output = ctx.model(batch["image"])
        return ctx.loss_fn(output, batch["mask"], batch["label"], batch["has_mask"], batch["has_label"])

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimizer step on a batch that is already on the device.

        The first step falls back instead of failing: a ``torch.compile`` error runs the step eagerly, then a
        Triton kernel error switches the model's kernel-backed layers to the PyTorch reference; each prints one
        line and the step is redone (no optimizer step was taken). Later errors propagate.
        """
        if self.checked:
            return self._step(batch)
        try:
            self._step(batch)
        except Exception as e:  # noqa: BLE001 - compiler / kernel failures of any type: fall back, say so
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            if self.compiled is not None:
                self.log(f"the compiled step failed ({reason}); running it eagerly")
                self.compiled, self.compile_status = None, f"eager (compile failed: {type(e).__name__})"
            elif self.ctx.raw_model.uses_triton(self.ctx.world.device):
                self.log(f"the Triton kernels failed in training ({reason}); using the PyTorch reference layers")
                self.ctx.raw_model.set_backend("reference")
                self.compile_status += " (Triton kernels failed: reference layers)"
            else:
                raise
            self.ctx.optimizer.zero_grad(set_to_none=True)
            return self(batch)
        self.checked = True

    def take(self, batch: dict[str, torch.Tensor], state: RunState) -> None:
        """One step in the epoch loop (the step counter is the device's own)."""
        self(batch)

    def begin_epoch(self) -> None:
        self.marks.clear()

    def read_due(self, step_in_epoch: int, steps: int, warm: int) -> bool:
        """Every ``sync_every`` steps, at the end of the warm-up (the steady-state clock starts) and of the epoch."""
        return step_in_epoch % self.sync_every == 0 or step_in_epoch in (warm, steps)

    def postfix(self) -> dict[str, str]:
        return {}  # the host does not wait for a loss between reads

    def facts(self, from_step: int, images_per_step: int) -> dict[str, Any]:
        """Images/s from the first read at or after global step ``from_step`` (past compile and autotuning) to the
        epoch's last read; both reads waited for the device, so this is what the device sustained."""
        marks = [m for m in self.marks if m[1] >= from_step]
        if len(marks) < 2 or marks[-1][0] <= marks[0][0]:
            return {}
        (t0, s0), (t1, s1) = marks[0], marks[-1]
        return {"steady_images_per_s": (s1 - s0) * images_per_step / (t1 - t0)}

    def describe(self) -> str:
        return f"device step: {self.compile_status}, fused AdamW, losses read every {self.sync_every}"

    def _step(self, batch: dict[str, torch.Tensor]) -> None:
        ctx = self.ctx
        remaining = torch.clamp(1.0 - self.step_t / self.total, min=0.0)
        lr = (self.base_lr * remaining**self.power).float()
        for group in ctx.optimizer.param_groups:
            group["lr"].copy_(lr)
        terms = (self.compiled or self._forward_loss)(batch)
        values = torch.stack([t.detach().float() for t in terms.values()])  # (T,)
        if ctx.world.distributed:
            dist.all_reduce(values)  # queued on the device: no host wait
            values = values / ctx.world.world_size
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(terms["loss"]).backward()
        if ctx.grad_clip > 0:
            ctx.scaler.unscale_(ctx.optimizer)
            torch.nn.utils.clip_grad_norm_(ctx.raw_model.parameters(), ctx.grad_clip, foreach=True)
        ctx.scaler.step(ctx.optimizer)  # fused AdamW takes the scaler's inf check on the device
        ctx.scaler.update()
        self.names = list(terms)
        self.sums = values if self.sums is None else self.sums + values
        self.pending += 1
        self.step_t += 1

    def read(self, state: RunState, images_per_step: int, where: str) -> None:
        """Waits for the device, adds the summed terms to ``state.running`` and checks them.

        Raises:
            NonFiniteLossError: a loss since the last read was NaN or infinite (named by the step window).
        """
        if self.pending == 0 or self.sums is None:
            return
        values = self.sums.tolist()  # the host sync
        sums = dict(zip(self.names, values, strict=True))
        if not all(math.isfinite(v) for v in values):
            detail = ", ".join(f"{k}={v:.6g}" for k, v in sums.items())
            raise NonFiniteLossError(
                f"non-finite training loss in the {self.pending} step(s) up to {where}: summed {detail}; lower the "
                "learning rate, enable grad_clip or amp='off', or check the data"
            )
        for key, value in sums.items():
            state.running[key] = state.running.get(key, 0.0) + value
        state.running["steps"] = state.running.get("steps", 0) + self.pending
        state.running["images"] = state.running.get("images", 0) + self.pending * images_per_step
        self.sums, self.pending = None, 0
        self.marks.append((time.perf_counter(), state.global_step))


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: DeviceSplit,
    *,
    ctx: StepContext,
    img_size: tuple[int, int],
    normalize: str,
    batch_size: int,
    class_names: tuple[str, ...],
    seg_classes: int,
    seg_class_names: tuple[str, ...] | None = None,
    max_steps: int = 0,
) -> dict[str, Any]:
    """Loss and the SPEC section 6 metrics of ``model`` on a device split, reduced over ranks (each rank takes
    rows ``rank::world_size``); one host read at the end.

    Returns:
        Flat dict as :func:`fastmtl.engine.train.loop.validate`: ``loss``, ``n_images`` and the meters' metrics.
    """
    seg_meter = SegmentationMeter(seg_classes, seg_class_names)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.images.device)
    counts, keep, probs, labels = [], [], [], []
    n = 0
    world = ctx.world
    try:
        shard = (world.rank, world.world_size)
        batches = eval_batches(split, batch_size, img_size, normalize, ctx.channels_last, shard)
        for i, batch in enumerate(batches):
            if max_steps and i >= max_steps:
                break
            with ctx.autocast():
                out = model(batch["image"])
            terms = ctx.loss_fn(out, batch["mask"], batch["label"], batch["has_mask"], batch["has_label"])
            b = batch["image"].shape[0]
            loss_sum += terms["loss"].double() * b
            n += b
            if out.seg_logits is not None:
                pred, truth = seg_meter._binarise(out.seg_logits, batch["mask"])  # (B, K, H, W) each
                counts.append(torch.stack([(pred & truth).sum((2, 3)), (pred & ~truth).sum((2, 3)),
                                           (~pred & truth).sum((2, 3))], dim=1))  # fmt: skip
                keep.append(batch["has_mask"])
            if out.cls_logits is not None:
                probs.append(torch.sigmoid(out.cls_logits.float()))
                labels.append(torch.cat([batch["label"], batch["has_label"][:, None].float()], dim=1))
    finally:
        model.train(was_training)
    state = EvalState(seg_meter, ClassificationMeter(class_names) if class_names else None, n_images=n,
                      loss_sum=float(loss_sum))  # fmt: skip
    if counts:  # the one host read
        has = torch.cat(keep).cpu()
        seg_meter.counts = torch.cat(counts).to(torch.int64).cpu()[has]
    if probs and state.cls is not None:
        table = torch.cat(labels).cpu()
        rows = table[:, -1] > 0.5
        state.cls.probs = torch.cat(probs).float().cpu()[rows]  # (M, K), as ClassificationMeter.update stores them
        state.cls.labels = (table[rows, :-1] > 0.5).long()
    return sync_state(state, world).metrics()


def layer_paths(model: nn.Module, device: torch.device, compile_status: str, dtype: torch.dtype | None) -> dict:
    """Which implementation each kind of layer of ``model`` takes in training on ``device`` (for run records)."""
    cuda = torch.device(device).type == "cuda"
    counts: dict[str, list[int]] = {}
    inside: set[int] = set()  # modules a Triton kernel runs instead of their own forward
    for module in kernel_layers(model):
        triton = use_triton(module.kernels, cuda)
        counts.setdefault(type(module).__name__, [0, 0])[0 if triton else 1] += 1
        if triton and not isinstance(module, _ATTENTION):  # attention keeps its qkv / proj linears
            inside.update(id(m) for m in module.modules())
    described = {
        "WindowAttention": "Triton window attention, forward and backward",
        "DFE": "Triton fused DFE branches + merge forward (BN unfolded), PyTorch/cuDNN backward",
        "DFE3": "Triton fused DFE3 forward, PyTorch/cuDNN backward",
    }
    math_lib = "cuDNN / cuBLAS" if cuda else "ATen CPU (oneDNN / BLAS)"
    paths: dict[str, str] = {}
    for name, (triton, reference) in sorted(counts.items()):
        if triton:
            paths[f"{name} x{triton}"] = described.get(name, "Triton kernels")
        if reference:
            paths[f"{name} x{reference}" + (" (reference)" if triton else "")] = f"PyTorch reference ({math_lib})"
    rest = [m for m in model.modules() if id(m) not in inside]
    convs = sum(isinstance(m, nn.modules.conv._ConvNd) for m in rest)
    linears = sum(isinstance(m, nn.Linear) for m in rest)
    precision = "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
    paths[f"Conv x{convs}"] = f"{math_lib}, {precision}"
    paths[f"Linear x{linears}"] = f"{math_lib}, {precision}"
    paths["step"] = compile_status
    return paths
