"""The training input path and step: the device-resident path against today's DataLoader path.

Groups:

- ``input-<img>px-b<batch>``: one epoch of training batches only (order, augmentation, normalisation), images/s.
  Providers ``dataloader-w0`` / ``dataloader-w2`` (:func:`fastmtl.engine.train.loaders.make_train_loader`'s loader:
  per-sample cache read, torchvision flip / rotate / resize, normalisation, collation; 0 or 2 worker processes)
  and ``device`` (:class:`fastmtl.engine.train.device_loader.DeviceTrainLoader` over the split decoded once, stored at
  ``store`` px and warped to ``img`` px in one ``grid_sample`` per batch; the one-off decode is ``decode_s``).
- ``step-<model>-<img>px-b<batch>``: a few full training steps, input included: ``dataloader+classic`` (the
  DataLoader path and :func:`fastmtl.engine.train.loop.train_step`, which reads the loss every step) against
  ``device+device-step`` (:class:`~fastmtl.engine.train.device_step.DeviceStep`: fused AdamW, device learning rate,
  one loss read per call). ``extra_info`` adds the forward + backward FLOPs per image, the achieved TFLOP/s and
  ``projected_150_epochs_min``: the paper's 150 epochs of 1,800 images at 224 px on this device, from the
  achieved FLOP rate (measured at this case's size; on a GPU run it at 224 for the real figure).

Data: the real ISIC 2017 training split (first ``images`` cases) when ``../shared/data/isic2017`` exists, else
synthetic lesions. Shapes: on CUDA the protocol's (224 px from 256, batch 8); on CPU the input group at the same
sizes and the step group at 64 px (a resformer_mtl step at 224 x 8 takes minutes there); ``--bench-quick``
32 px, batch 2.

Run: ``pytest bench/test_input_pipeline.py --benchmark-json=out.json`` (torch's default threads: say whether
the machine was shared).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from experiments.projection import project_minutes, train_flops_per_image
from fastmtl.data import build_dataset, subset
from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.train.config import config_from_dict
from fastmtl.engine.train.device_loader import DeviceTrainLoader, decode_split
from fastmtl.engine.train.device_step import DeviceStep
from fastmtl.engine.train.loaders import EpochSeeded, ResumableSampler
from fastmtl.engine.train.loop import StepContext, train_step
from fastmtl.losses import MTLLoss
from fastmtl.registry import create_model
from fastmtl.runtime import amp_dtype, batch_to_device

ISIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2017"
PAPER_IMAGES, PAPER_IMG = 1800, 224


@dataclass(frozen=True)
class InputCase:
    img: int  # training input side
    store: int  # stored side on the device path
    batch: int
    images: int  # images per timed epoch

    @property
    def group(self) -> str:
        return f"input-{self.img}px-b{self.batch}"


def _cases(quick: bool, device: torch.device) -> tuple[InputCase, InputCase]:
    """(input case, step case) for this device."""
    if quick:
        return InputCase(32, 40, 2, 16), InputCase(32, 40, 2, 4)
    if device.type == "cuda":
        return InputCase(224, 256, 8, 1792), InputCase(224, 256, 8, 64)
    return InputCase(224, 256, 8, 256), InputCase(64, 80, 8, 16)


def _dataset(case: InputCase, size: int):
    """The first ``case.images`` training cases at ``size`` (augmenting), real ISIC when present."""
    if (ISIC / "ISIC-2017_Training_Part3_GroundTruth.csv").is_file():
        ds = build_dataset("isic2017", ISIC, "training", img_size=size, train=True)
        return subset(ds, range(min(case.images, len(ds))))
    return build_dataset("synthetic", None, "train", img_size=size, train=True, n=case.images)


def _dataloader(case: InputCase, workers: int):
    ds = EpochSeeded(_dataset(case, case.img), seed=1234)
    sampler = ResumableSampler(ds, DistInfo(), 1234)
    loader = torch.utils.data.DataLoader(ds, batch_size=case.batch, sampler=sampler, num_workers=workers,
                                         drop_last=True, generator=torch.Generator().manual_seed(0))  # fmt: skip
    return loader, sampler, ds


def _device_loader(
    case: InputCase, device: torch.device, channels_last: bool = False
) -> tuple[DeviceTrainLoader, float]:
    ds = _dataset(case, case.store)
    start = time.perf_counter()
    split = decode_split(ds, device)
    decode_s = time.perf_counter() - start
    t = ds.transform
    augment = {"hflip_p": t.hflip_p, "rotate_p": t.rotate_p, "degrees": t.degrees}
    loader = DeviceTrainLoader(split, batch_size=case.batch, seed=1234, world=DistInfo(device=device),
                               img_size=(case.img, case.img), normalize="imagenet", channels_last=channels_last,
                               augment=augment)  # fmt: skip
    return loader, decode_s


@pytest.mark.parametrize("provider", ["dataloader-w0", "dataloader-w2", "device"])
def test_input(provider, measure, bench_device, bench_quick):
    case, _ = _cases(bench_quick, bench_device)
    epoch = iter(range(1, 1_000_000))
    if provider == "device":
        loader, decode_s = _device_loader(case, bench_device)
        extra = {"decode_s": decode_s, "stored_mib": loader.split.nbytes / 2**20}

        def one_epoch() -> None:
            loader.set_epoch(next(epoch))
            for batch in loader:
                batch["image"].sum()  # consume it, as a step would
    else:
        loader, sampler, ds = _dataloader(case, int(provider[-1]))
        extra = {"workers": int(provider[-1])}

        def one_epoch() -> None:
            e = next(epoch)
            ds.set_epoch(e)
            sampler.set_epoch(e)
            for batch in loader:
                batch["image"].to(bench_device, non_blocking=True).sum()

    measure(one_epoch, group=case.group, provider=provider, items=(case.images // case.batch) * case.batch,
            img_size=case.img, store_size=case.store, batch=case.batch, **extra)  # fmt: skip


def _step_parts(case: InputCase, device: torch.device, model_name: str) -> StepContext:
    torch.manual_seed(0)
    model = create_model(model_name, img_size=case.img).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=7e-5, weight_decay=3e-5, fused=True)
    dtype = amp_dtype("auto", device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    return StepContext(model, model, optimizer, scaler, MTLLoss(1, 0.25).to(device), DistInfo(device=device), dtype,
                       channels_last=True)  # fmt: skip


@pytest.mark.parametrize("provider", ["dataloader+classic", "device+device-step"])
def test_step(provider, measure, bench_device, bench_quick, benchmark):
    _, case = _cases(bench_quick, bench_device)
    model_name = "resformer_mtl"
    ctx = _step_parts(case, bench_device, model_name)
    steps = case.images // case.batch
    epoch = iter(range(1, 1_000_000))
    if provider.startswith("device"):
        loader, _ = _device_loader(case, bench_device, channels_last=True)
        step = DeviceStep(ctx, base_lr=7e-5, total_steps=10**6, power=0.9, global_step=0)

        def run_steps() -> None:
            loader.set_epoch(next(epoch))
            for batch in loader:
                step(batch)
            step.sums.tolist()  # the one loss read (waits for the device)
            step.sums, step.pending = None, 0
    else:
        loader, sampler, ds = _dataloader(case, 0)
        ctx.optimizer = torch.optim.AdamW(ctx.raw_model.parameters(), lr=7e-5, weight_decay=3e-5)  # today's default

        def run_steps() -> None:
            e = next(epoch)
            ds.set_epoch(e)
            sampler.set_epoch(e)
            for batch in loader:
                train_step(ctx, batch_to_device(batch, ctx.world.device, ctx.channels_last), 7e-5, "bench")

    config = config_from_dict({"model": model_name, "img_size": case.img})
    flops = train_flops_per_image(config)
    group = f"step-{model_name}-{case.img}px-b{case.batch}"
    measure(run_steps, group=group, provider=provider, items=steps * case.batch, flops=steps * case.batch * flops,
            img_size=case.img, batch=case.batch)  # fmt: skip
    rate = benchmark.extra_info.get("images_per_s")
    if rate:
        achieved = rate * flops  # FLOP/s sustained at this case's size
        paper_flops = train_flops_per_image(config.replace(img_size=PAPER_IMG))
        minutes = project_minutes(PAPER_IMAGES, achieved / paper_flops, 150)
        benchmark.extra_info.update(train_gflops_per_image=flops / 1e9, achieved_tflops=achieved / 1e12,
                                    projected_150_epochs_min=minutes)  # fmt: skip
        print(f"\n{provider}: {rate:.2f} images/s at {case.img} px = {achieved / 1e12:.4f} TFLOP/s; the paper's 150 "
              f"epochs at {PAPER_IMG} px would take {minutes:.0f} min on {bench_device.type} at that rate")  # fmt: skip
