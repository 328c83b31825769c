"""Building a training run: data, model, optimizer, loss, the resumed state, and the two choices made once, here,
for the whole run: where the batches come from (:func:`~fastmtl.engine.train.batches.build_batches`) and which
step trains (:class:`~fastmtl.engine.train.loop.EagerStep` or :class:`~fastmtl.engine.train.device_step.DeviceStep`).
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from fastmtl.checkpoint.rundir import RunDir
from fastmtl.checkpoint.sets import set_files
from fastmtl.checkpoint.store import load_training_state, load_weights
from fastmtl.engine.distributed import DistInfo
from fastmtl.engine.train.batches import build_batches
from fastmtl.engine.train.config import RUNTIME_FIELDS, TrainConfig, config_from_dict
from fastmtl.engine.train.config_file import save_config
from fastmtl.engine.train.device_step import DeviceStep
from fastmtl.engine.train.folder import check_out_dir, check_same_data, mark
from fastmtl.engine.train.loaders import RunData, build_run_data, class_weights_for, split_record
from fastmtl.engine.train.loop import EagerStep, Step, StepContext
from fastmtl.engine.train.run import Run
from fastmtl.engine.train.state import RunState, restore_rng
from fastmtl.files import atomic_write_json
from fastmtl.losses import MTLLoss
from fastmtl.registry import create_model, model_options
from fastmtl.runtime import amp_dtype

__all__ = ["build_run", "determinism"]


@contextmanager
def determinism(config: TrainConfig, device: torch.device):
    """Deterministic kernels for the duration of the run; the process-wide settings are restored after."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    if config.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not config.run.deterministic
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
    """Creates the model at ``model.img_size`` with seg/cls outputs defaulting to the data's; mismatches raise a
    ValueError."""
    name = config.model.name
    accepted = model_options(name)
    opts = dict(config.model.options)
    if "img_size" in accepted:
        opts["img_size"] = config.model.img_size
    for key, value in {"seg_classes": data.seg_classes, "cls_classes": len(data.class_names)}.items():
        if key == "seg_classes" and key in opts and opts[key] != value:
            raise ValueError(f"model.options.{key}={opts[key]} contradicts the run's {key}={value} ({data.kind} data)")
        if key in accepted and value > 0:
            opts.setdefault(key, value)
    model = create_model(name, trunk_weights=config.model.trunk_weights or None, **opts)
    if not data.class_names and model.config.cls_head != "none":
        raise ValueError(
            f"the {data.kind} data has no classification labels but model {name!r} has a classification "
            "head; add labels (e.g. labels.csv) or train a segmentation-only model such as unet_resnet34"
        )
    if model.config.cls_head != "none" and model.config.cls_classes != len(data.class_names):
        raise ValueError(
            f"model {name!r} has {model.config.cls_classes} classification outputs but the data has "
            f"{len(data.class_names)} classes {list(data.class_names)}"
        )
    return model


def _resume(run_dir: RunDir, model: nn.Module, optimizer, config: TrainConfig, world: DistInfo) -> RunState:
    """Loads the newest consistent ``last`` set (falling back to ``last.prev`` with a printed line when a kill
    cut the last save short): weights, optimizer, counters and this rank's RNG state."""
    stem, note = run_dir.resumable()
    if note and world.is_main:
        tqdm.write(f"fastmtl: {note}")
    sidecar = load_training_state(stem, optimizer, verified=True)
    try:  # a run saved before a field existed ran with its default; one saved flat is read through FLAT_KEYS
        saved = config_from_dict(sidecar.get("train_config", {}), source=str(set_files(stem)[2])).flat()
    except ValueError as e:
        raise ValueError(f"cannot resume {run_dir.path}: {e}") from e
    changed = sorted(k for k, v in config.flat().items() if k not in RUNTIME_FIELDS and saved[k] != v)
    if changed:
        raise ValueError(
            f"cannot resume {run_dir.path}: the config differs from the saved run in {changed}; resume with the "
            f"saved {run_dir.config_toml}"
        )
    load_weights(model, set_files(stem)[0])
    rngs = sidecar["rng"]
    restore_rng(rngs[world.rank] if len(rngs) == world.world_size else rngs[0])
    return RunState.from_json(sidecar["state"])


def _context(config: TrainConfig, model: nn.Module, data: RunData, world: DistInfo) -> StepContext:
    # The device step uses fused AdamW (one launch for all parameters, a device learning rate, the scaler's inf
    # check without a host read); the classic step keeps PyTorch's default implementation.
    optim = config.optim
    fused = True if config.run.device_step else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, fused=fused
    )
    dtype = amp_dtype(config.run.amp, world.device)
    weights = class_weights_for(data) if optim.class_weights else None
    loss_fn = MTLLoss(model.config.seg_classes, optim.alpha, weights).to(world.device)
    scaler = torch.amp.GradScaler(world.device.type, enabled=dtype is torch.float16)
    return StepContext(model, model, optimizer, scaler, loss_fn, world, dtype, config.run.channels_last,
                       optim.grad_clip)  # fmt: skip


def _step(config: TrainConfig, ctx: StepContext, total_steps: int, global_step: int) -> Step:
    """The run's step, with the DDP and ``torch.compile`` wrappers around the training forward (the raw model stays
    for evaluation and saving): the device step compiles its forward and loss itself."""
    run, optim = config.run, config.optim
    model = ctx.raw_model
    if ctx.world.distributed:
        device_ids = [ctx.world.device.index] if ctx.world.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    mode = run.compile_mode if run.compile else None
    schedule = {"base_lr": optim.lr, "total_steps": total_steps, "power": optim.poly_power, "compile_mode": mode}
    if run.device_step:
        ctx.model = model
        return DeviceStep(ctx, global_step=global_step, log=tqdm.write, sync_every=run.sync_every, **schedule)
    ctx.model = torch.compile(model, mode=mode) if mode else model
    return EagerStep(ctx, **schedule)


def build_run(config: TrainConfig, data_root, run_dir: RunDir, resume: bool, world: DistInfo, other_data: bool) -> Run:
    """Data, model, optimizer, loss, (resumed) state, batches and step; writes the resolved config."""
    check_out_dir(run_dir, resume)
    _seed(config.optim.seed, world.rank)
    data = build_run_data(config, data_root)
    if resume:
        check_same_data(run_dir, split_record(config, data), other_data)
    model = _build_model(config, data).to(world.device)
    if config.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ctx = _context(config, model, data, world)
    torch.manual_seed(config.optim.seed + world.rank)  # per-rank stream for drop path from here on
    state = _resume(run_dir, model, ctx.optimizer, config, world) if resume else RunState()
    if state.scaler:
        ctx.scaler.load_state_dict(state.scaler)
    batches = build_batches(config, data, world)
    step = _step(config, ctx, config.optim.epochs * batches.steps, state.global_step)
    if world.is_main:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        mark(run_dir)
        save_config(config, run_dir)
        atomic_write_json(run_dir.split, split_record(config, data))
    return Run(config, run_dir, data, ctx, state, batches, step)
