"""Two CPU processes (gloo, ``env://`` as under torchrun) train one model: one checkpoint, one log, merged metrics."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from fastmtl.engine.train.job import train
from tests.engine.test_train import tiny_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    """What torchrun would set up for each process, then the same ``train`` call as a single process."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    config = tiny_config(epochs=2, max_steps_per_epoch=2, data_options={"n": 16})
    result = train(config, None, Path(out_dir) / "run")
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({k: result[k] for k in ("global_step", "metrics")}))


def test_two_process_gloo_run_writes_one_checkpoint_and_log(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        ".fastmtl-train",  # the marker of a training folder (fastmtl.engine.train.folder)
        "best.safetensors",
        "config.json",
        "config.toml",
        "curves.png",
        "last.json",
        "last.safetensors",
        "last.train.safetensors",
        "log.csv",
        "log.jsonl",
        "split.json",
    ]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # the 16 validation images were split 8/8 over the ranks; the merged meters see all of them, once
    assert rows[-1]["val_n_seg_images"] == 16 and rows[-1]["val_n_cls_images"] == 16
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert results[0] == results[1]  # every rank computed the same merged metrics
    assert results[0]["global_step"] == 4
    sidecar = json.loads((run / "last.json").read_text())
    assert len(sidecar["rng"]) == WORLD  # one RNG state per rank for an exact resume
    assert set(load_file(run / "last.safetensors")) == set(load_file(run / "best.safetensors"))
