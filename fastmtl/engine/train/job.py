"""``train(config, data_root, out_dir)``: the paper's training protocol (SPEC section 5) as plain functions.

AdamW with a per-iteration poly schedule, class-weighted MTL loss, optional mixed precision / channels-last /
``torch.compile`` / gradient clipping, validation on a split carved from training (or the dataset's own), and
checkpoint selection by validation JI (AUC for classification-only models).

Outputs in ``out_dir``: ``config.json`` / ``config.toml`` (the resolved config), ``last.*`` (every epoch and every
``checkpoint_every_steps`` steps, with optimizer and RNG state for ``resume=True``), ``best.safetensors``,
``log.jsonl`` / ``log.csv`` (one row per epoch) and ``curves.png``. Under torchrun only rank 0 writes. What
happens between steps and after epochs (checkpoints, logs, the time limit) is in :mod:`fastmtl.engine.train.run`;
validation runs the evaluation loop of :mod:`fastmtl.engine.evaluate.loop`.

Fast path (``input_pipeline = "device"``, ``device_step = true``): the training and validation splits are decoded
once into uint8 tensors on the training device and augmented there in batches
(:mod:`fastmtl.engine.train.device_loader`), and the step never waits for the device
(:mod:`fastmtl.engine.train.device_step`); the epoch order, augmentation draws and resume are the same as above.

Exact resume: the checkpoint holds the weights, the optimizer, the step counters and every RNG state (per
rank); the data order and augmentation are functions of (seed, epoch, index) (see :mod:`fastmtl.engine.train.loaders`),
so a run killed at any point and resumed from ``last`` ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fastmtl.checkpoint.sets import clean_stale, resumable, set_files
from fastmtl.checkpoint.store import load_training_state, load_weights
from fastmtl.engine.distributed import DistInfo, barrier, cleanup, init_distributed
from fastmtl.engine.train.config import RUNTIME_FIELDS, TrainConfig, config_from_dict, save_config
from fastmtl.engine.train.device_loader import DeviceSplit, DeviceTrainLoader, decode_split
from fastmtl.engine.train.device_step import DeviceStep, evaluate_split, with_kernel_fallback
from fastmtl.engine.train.folder import check_out_dir, check_same_data, mark
from fastmtl.engine.train.loaders import (
    RunData,
    build_run_data,
    class_weights_for,
    make_train_loader,
    make_val_loader,
    set_epoch,
    split_record,
    steps_per_epoch,
)
from fastmtl.engine.train.loop import StepContext, _to_device, run_epoch, validate
from fastmtl.engine.train.records import plot_curves, write_logs
from fastmtl.engine.train.run import Run, after_step, cut_epoch, finish_epoch, run_summary
from fastmtl.engine.train.schedule import BudgetSchedule, poly_lr
from fastmtl.engine.train.state import RunState, restore_rng
from fastmtl.files import atomic_write_json, exclusive_folder
from fastmtl.losses import MTLLoss
from fastmtl.registry import create_model, model_options
from fastmtl.runtime import amp_dtype

__all__ = ["TrainConfig", "train"]


@contextmanager
def _determinism(config: TrainConfig, device: torch.device):
    """Deterministic kernels for the duration of the run; the process-wide settings are restored after."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not config.deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = benchmark


def _seed(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed)  # the same on every rank: identical initial weights


def _build_model(config: TrainConfig, data: RunData) -> nn.Module:
    """Creates the model with seg/cls outputs defaulting to the data's; mismatches raise a ValueError."""
    accepted = model_options(config.model)
    opts = dict(config.model_options)
    wanted = {"img_size": config.img_size, "seg_classes": data.seg_classes, "cls_classes": len(data.class_names)}
    for key, value in wanted.items():
        if key in opts and key != "cls_classes" and opts[key] != value:
            raise ValueError(f"model_options.{key}={opts[key]} contradicts the run's {key}={value} ({data.kind} data)")
        if key in accepted and value > 0:
            opts.setdefault(key, value)
    model = create_model(config.model, trunk_weights=config.trunk_weights or None, **opts)
    if not data.class_names and model.config.cls_head != "none":
        raise ValueError(
            f"the {data.kind} data has no classification labels but model {config.model!r} has a classification "
            "head; add labels (e.g. labels.csv) or train a segmentation-only model such as unet_resnet34"
        )
    if model.config.cls_head != "none" and model.config.cls_classes != len(data.class_names):
        raise ValueError(
            f"model {config.model!r} has {model.config.cls_classes} classification outputs but the data has "
            f"{len(data.class_names)} classes {list(data.class_names)}"
        )
    return model


def _resume(out_dir: Path, model: nn.Module, optimizer, config: TrainConfig, world: DistInfo) -> RunState:
    """Loads the newest consistent ``last`` set (falling back to ``last.prev`` with a printed line when a kill
    cut the last save short): weights, optimizer, counters and this rank's RNG state."""
    stem, note = resumable(out_dir / "last")
    if note and world.is_main:
        tqdm.write(f"fastmtl: {note}")
    sidecar = load_training_state(stem, optimizer, verified=True)
    saved = sidecar.get("train_config", {})
    defaults = config_from_dict({}).to_dict()  # a run saved before a field existed ran with its default
    changed = sorted(
        k for k, v in config.to_dict().items() if k not in RUNTIME_FIELDS and saved.get(k, defaults[k]) != v
    )
    if changed:
        raise ValueError(
            f"cannot resume {out_dir}: the config differs from the saved run in {changed}; resume with the saved "
            f"{out_dir / 'config.toml'}"
        )
    load_weights(model, set_files(stem)[0])
    rngs = sidecar["rng"]
    restore_rng(rngs[world.rank] if len(rngs) == world.world_size else rngs[0])
    return RunState.from_json(sidecar["state"])


def _context(config: TrainConfig, model: nn.Module, data: RunData, world: DistInfo) -> StepContext:
    # The device step uses fused AdamW (one launch for all parameters, a device learning rate, the scaler's inf
    # check without a host read); the classic step keeps PyTorch's default implementation.
    fused = True if config.device_step else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, fused=fused
    )
    dtype = amp_dtype(config.amp, world.device)
    weights = class_weights_for(data) if config.class_weights else None
    loss_fn = MTLLoss(model.config.seg_classes, config.alpha, weights).to(world.device)
    scaler = torch.amp.GradScaler(world.device.type, enabled=dtype is torch.float16)
    return StepContext(model, model, optimizer, scaler, loss_fn, world, dtype, config.channels_last, config.grad_clip)


def _wrap(ctx: StepContext, config: TrainConfig) -> None:
    """DDP and ``torch.compile`` wrappers around the training forward (the raw model stays for eval and saving)."""
    model = ctx.raw_model
    if ctx.world.distributed:
        device_ids = [ctx.world.device.index] if ctx.world.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    # the device step compiles its forward + loss itself
    ctx.model = torch.compile(model, mode=config.compile_mode) if config.compile and not config.device_step else model


def train(
    config: TrainConfig,
    data_root: str | Path | None = None,
    out_dir: str | Path = "runs/train",
    resume: bool = False,
    *,
    deadline: float | None = None,
    other_data: bool = False,
    budget_schedule: bool = False,
    warm_validation: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Trains a model; see the module docstring for the protocol and the files written.

    Args:
        config: the run's settings.
        data_root: dataset folder (None: synthetic data, or ``config.data`` must not need one).
        out_dir: output folder (created); must not hold a run unless ``resume``.
        resume: continue the run saved in ``out_dir/last`` exactly where it stopped; refused when the data differs
            from the run's ``split.json`` (:mod:`fastmtl.engine.train.folder`) unless ``other_data``.
        deadline: a ``time.monotonic()`` value: stop there as ``time_limit_min`` does (saving ``last``); for a
            caller whose budget includes the data decoding and what follows the training.
        budget_schedule: with ``deadline`` (device step only): fit the poly schedule to the deadline
            (:class:`~fastmtl.engine.train.schedule.BudgetSchedule`): the run ends, validated and saved, after the
            planned steps, with its learning rate decayed to the end.
        warm_validation: time the first validation a second time (``validation_warm_s`` in its log row): the
            first one includes autotuning and cuDNN's algorithm search.
        on_epoch: called after each epoch's log row and checkpoints with the summary so far (main process).

    Returns:
        Summary: ``out_dir``, ``best_checkpoint``, ``last_checkpoint``, ``selection_metric``, ``best_value``,
        ``best_epoch``, ``epochs_completed``, ``global_step``, ``stopped_early``, ``metrics`` (last validation),
        ``history``, ``step`` (which training step ran, compiled or eager), ``partial_epoch`` (steps and rate of
        an epoch the time limit cut, else {}) and ``schedule`` (the budget schedule's plan, else None).

    Raises:
        ValueError: invalid config or data (including :class:`~fastmtl.engine.train.loop.NonFiniteLossError`).
        FileNotFoundError: missing data.
        CheckpointError: ``resume`` without a checkpoint.
    """
    world = init_distributed(config.device)
    try:
        with exclusive_folder(out_dir, "train", enabled=world.is_main), _determinism(config, world.device):
            if world.is_main:
                for stem in ("last", "best"):
                    clean_stale(Path(out_dir) / stem)
            hooks = {"budget_schedule": budget_schedule, "warm_validation": warm_validation, "on_epoch": on_epoch}
            return _train(config, data_root, Path(out_dir), resume, world, deadline, other_data, hooks)
    finally:
        cleanup(world)


def _setup(config: TrainConfig, data_root, out_dir: Path, resume: bool, world: DistInfo, other_data: bool) -> Run:
    """Data, model, optimizer, loss, (resumed) state, wrappers and loaders; writes the resolved config."""
    check_out_dir(out_dir, resume)
    _seed(config.seed, world.rank)
    data = build_run_data(config, data_root)
    if resume:
        check_same_data(out_dir, split_record(config, data), other_data)
    model = _build_model(config, data).to(world.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ctx = _context(config, model, data, world)
    torch.manual_seed(config.seed + world.rank)  # per-rank stream for drop path from here on
    state = _resume(out_dir, model, ctx.optimizer, config, world) if resume else RunState()
    if state.scaler:
        ctx.scaler.load_state_dict(state.scaler)
    _wrap(ctx, config)
    if config.input_pipeline == "device":
        train_loader, val_loader = _device_loaders(config, data, world)
        steps = min(train_loader.full_batches(), config.max_steps_per_epoch or train_loader.full_batches())
    else:
        train_loader, val_loader = make_train_loader(data, config, world), make_val_loader(data, config, world)
        steps = steps_per_epoch(train_loader, config)
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        mark(out_dir)
        save_config(config, out_dir)
        atomic_write_json(out_dir / "split.json", split_record(config, data))
    run = Run(config, out_dir, data, ctx, state, train_loader, val_loader, steps)
    if config.device_step:
        mode = config.compile_mode if config.compile else None
        run.step = DeviceStep(ctx, base_lr=config.lr, total_steps=run.total_steps, power=config.poly_power,
                              global_step=state.global_step, compile_mode=mode, log=tqdm.write)  # fmt: skip
    return run


def _device_loaders(config: TrainConfig, data: RunData, world: DistInfo) -> tuple[DeviceTrainLoader, DeviceSplit]:
    """The training and validation splits decoded onto the device; the training loader augments there."""
    transform = data.train.transform  # the dataset's PairTransform: the same augmentation settings
    augment = {"hflip_p": transform.hflip_p, "rotate_p": transform.rotate_p, "degrees": transform.degrees}
    train_split = decode_split(data.train, world.device, config.num_workers)
    loader = DeviceTrainLoader(
        train_split, batch_size=config.batch_size, seed=config.seed, world=world,
        img_size=(config.img_size, config.img_size), normalize=config.normalize, augment=augment,
        drop_last=config.drop_last, channels_last=config.channels_last,
    )  # fmt: skip
    return loader, decode_split(data.val, world.device, config.num_workers)


def _epoch(run: Run) -> bool:
    """Trains, validates and records one epoch (or its rest after a resume); False when stopped early."""
    config, state = run.config, run.state
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if run.step is not None:
        completed, extra = _device_epoch(run)
    else:
        completed = run_epoch(run.ctx, state, run.train_loader, base_lr=config.lr, steps=run.steps,
                              total_steps=run.total_steps, poly_power=config.poly_power,
                              after_step=lambda _: after_step(run),
                              progress=config.progress and run.ctx.world.is_main)  # fmt: skip
    if completed:
        state.running["seconds"] = state.running.get("seconds", 0.0) + time.perf_counter() - started
        lr = poly_lr(config.lr, max(state.global_step - 1, 0), run.total_steps, config.poly_power)  # its last step's
        last = state.epoch + 1 >= config.epochs or run.plan_done()
        val, ended = None, time.monotonic()
        if last or (state.epoch + 1) % config.val_every_epochs == 0:
            val = _timed_validation(run, extra)
        finish_epoch(run, val, lr, extra)
        if val is not None and run.schedule is not None:
            _replan(run, ended, extra)
    return completed


def _timed_validation(run: Run, extra: dict[str, Any]) -> dict[str, Any]:
    """Validates, recording ``validation_s`` (and ``validation_warm_s`` for the run's first validation when asked)."""
    started = time.perf_counter()
    val = _validate(run)
    extra["validation_s"] = time.perf_counter() - started
    if run.warm_validation and not any("validation_s" in r for r in run.state.history):
        started = time.perf_counter()
        _validate(run)
        extra["validation_warm_s"] = time.perf_counter() - started
    return val


def _replan(run: Run, ended: float, extra: dict[str, Any]) -> None:
    """A budget schedule re-plans after a validated epoch with what its end cost (a warm validation, the
    checkpoint and the logs), measured from the epoch's last step to now."""
    now = time.monotonic()
    elapsed = now - ended
    cost = elapsed - extra["validation_s"] if "validation_warm_s" in extra else elapsed  # warm, not cold + warm
    if run.schedule is not None and not run.plan_done():
        run.schedule.validated(now, run.state.global_step, cost, elapsed)
        run.step.total = run.total_steps


def _validate(run: Run) -> dict[str, Any]:
    """Validation metrics; a Triton kernel failure (eval mode uses other kernels than training) falls back to the
    reference layers with a printed line instead of ending the run."""
    model, device = run.ctx.raw_model, run.ctx.world.device
    return with_kernel_fallback(model, device, lambda: _validate_once(run), tqdm.write, "validation")


def _validate_once(run: Run) -> dict[str, Any]:
    data, config = run.data, run.config
    if isinstance(run.val_loader, DeviceSplit):
        return evaluate_split(run.ctx.raw_model, run.val_loader, ctx=run.ctx, img_size=(config.img_size,) * 2,
                              normalize=config.normalize, batch_size=config.resolved_eval_batch_size,
                              class_names=data.class_names, seg_classes=data.seg_classes,
                              seg_class_names=data.seg_class_names, max_steps=config.max_val_steps)  # fmt: skip
    return validate(run.ctx, run.val_loader, data.class_names, data.seg_classes, config.max_val_steps,
                    data.seg_class_names)  # fmt: skip


def _device_epoch(run: Run) -> tuple[bool, dict[str, Any]]:
    """One epoch (or its rest) of the device step: the host only queues work, reading the losses every
    ``sync_every`` steps; returns (completed, throughput facts for the log row)."""
    state, config, step = run.state, run.config, run.step
    assert step is not None
    loader = run.train_loader
    set_epoch(loader, state.epoch, state.step_in_epoch)
    on_host = isinstance(loader, DataLoader)  # the DataLoader path's batches still have to reach the device
    run.ctx.model.train()
    step.marks.clear()
    first, started = state.global_step, time.perf_counter()
    per_step = config.batch_size * run.ctx.world.world_size
    warm = min(10, max(run.steps // 4, 1))  # steps before the steady-state clock starts (compile, autotune)
    schedule = run.schedule
    bar = tqdm(total=run.steps, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}",
               disable=not (config.progress and run.ctx.world.is_main), leave=False)  # fmt: skip
    try:
        for _, batch in zip(range(run.steps - state.step_in_epoch), loader, strict=False):
            step(_to_device(batch, run.ctx) if on_host else batch)
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            if state.step_in_epoch % config.sync_every == 0 or state.step_in_epoch in (warm, run.steps):
                run.read_losses()
            if schedule is not None and schedule.needs_sync(state.global_step):
                run.read_losses()  # waits for the device: the clock mark is the device's time
                if schedule.observe(time.monotonic(), state.global_step) and run.ctx.world.is_main:
                    tqdm.write(schedule.describe(config.epochs))
                step.total = run.total_steps
            if run.plan_done():
                break  # the budget's last step: this (shortened) epoch validates and the run ends
            if after_step(run):
                run.read_losses()
                cut_epoch(run, first, _steady(step.marks, first + warm, per_step), time.perf_counter() - started)
                return False, {}
    finally:
        bar.close()
    run.read_losses()
    return True, _steady(step.marks, first + warm, per_step)


def _steady(marks: list[tuple[float, int]], from_step: int, per_step: int) -> dict[str, Any]:
    """Images/s from the first read at or after global step ``from_step`` (past compile and autotuning) to the
    epoch's last read; both reads waited for the device, so this is what the device sustained."""
    marks = [m for m in marks if m[1] >= from_step]
    if len(marks) < 2 or marks[-1][0] <= marks[0][0]:
        return {}
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return {"steady_images_per_s": (s1 - s0) * per_step / (t1 - t0)}


def _train(config: TrainConfig, data_root, out_dir: Path, resume: bool, world: DistInfo, deadline,
           other_data: bool, hooks: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    run = _setup(config, data_root, out_dir, resume, world, other_data)
    run.deadline = deadline
    run.warm_validation = hooks["warm_validation"]
    if hooks["budget_schedule"]:
        if deadline is None or run.step is None:
            raise ValueError("the budget schedule needs a time budget and the device step (device_step = true)")
        run.schedule = BudgetSchedule.fitting(deadline, run.steps, config, len(run.val_loader))
    if hooks["on_epoch"] is not None and world.is_main:
        run.on_epoch = lambda r: hooks["on_epoch"](_summary(r, False))
    stopped = False
    while run.state.epoch < config.epochs and not stopped and not run.plan_done():
        stopped = not _epoch(run)
    barrier(world)
    if world.is_main and run.state.history:
        write_logs(run.state.history, out_dir)  # again: a kill right after the last checkpoint left them behind
        plot_curves(run.state.history, out_dir / "curves.png")
    return _summary(run, stopped)


def _summary(run: Run, stopped: bool) -> dict[str, Any]:
    config = run.config
    summary = run_summary(run.out_dir, run.state, stopped)
    if run.step is not None:
        summary["step"] = f"device step: {run.step.compile_status}, fused AdamW, losses read every {config.sync_every}"
    else:
        summary["step"] = "classic step: " + (
            f"torch.compile(mode={config.compile_mode!r})" if config.compile else "eager"
        )
    summary["partial_epoch"] = run.partial
    summary["schedule"] = run.schedule
    return summary
