"""Batch prediction: input forms, original-size masks, CSV, corrupt files, OOM halving, sharding, real data."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmtl.engine.predict import writer as writer_module
from fastmtl.engine.predict.job import collect_inputs, image_ids, predict
from fastmtl.models.baselines import UNetResNet34

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ISIC_TRAIN = DATA / "isic2017" / "ISIC-2017_Training_Data"


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as file:
        return list(csv.DictReader(file))


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_predict_folder_writes_original_size_masks_and_skips_corrupt(
    tmp_path, tiny_checkpoint, image_files, corrupt_image
):
    out = tmp_path / "out"
    summary = predict(
        tiny_checkpoint(img_size=32), tmp_path / "images", out, batch_size=4, num_workers=2, overlays=True
    )
    assert summary.n_images == len(image_files) and summary.n_failed == 1
    ((failed_path, reason),) = summary.failures
    assert failed_path == str(corrupt_image) and reason
    assert _rows(out / "failures.csv")[0]["path"] == str(corrupt_image)
    rows = _rows(summary.csv_path)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p, _ in image_files.values())
    assert {"prob_class0", "pred_class2", "area_fraction", "mask"} <= set(rows[0])  # no names in meta: generic
    for row in rows:
        size = next(s for p, s in image_files.values() if str(p) == row["path"])
        mask = _mask(summary.mask_dir / row["mask"])
        assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
        assert float(row["area_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert 0.0 <= float(row["prob_class0"]) <= 1.0 and row["pred_class0"] in ("0", "1")
        with Image.open(summary.overlay_dir / row["mask"]) as overlay:  # small inputs: enlarged by whole pixels,
            factor = -(-256 // min(size))  # with the id, the classes and a legend around the picture
            assert overlay.width == size[1] * factor and overlay.height > size[0] * factor and overlay.mode == "RGB"
    assert {r["id"] for r in rows} >= {"rgb", "sub__nested"}  # nested folders keep their path in the id


def test_collect_inputs_forms(tmp_path, image_files):
    all_paths = sorted(p for p, _ in image_files.values())
    assert collect_inputs(tmp_path / "images") == all_paths
    assert collect_inputs(str(tmp_path / "images" / "*.png")) == sorted(p for p in all_paths if p.suffix == ".png")
    listing = tmp_path / "list.txt"
    listing.write_text("# two images\nimages/rgb.png\n\n" + str(image_files["jpeg"][0]) + "\n")
    assert collect_inputs(listing) == sorted([image_files["rgb"][0], image_files["jpeg"][0]])
    assert collect_inputs([image_files["bmp"][0], str(image_files["rgb"][0])]) == sorted(
        [image_files["bmp"][0], image_files["rgb"][0]]
    )
    assert collect_inputs(tmp_path, exclude=[tmp_path / "images" / "sub"]) == [
        p for p in all_paths if "sub" not in p.parts
    ]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        collect_inputs(str(tmp_path / "nothing_here" / "*.png"))
    with pytest.raises(FileNotFoundError, match="empty"):
        (tmp_path / "empty").mkdir()
        collect_inputs(tmp_path / "empty")


def test_image_ids_are_unique():
    paths = [Path("/d/a.png"), Path("/d/a.jpg"), Path("/d/x/a.png"), Path("/d/b c.png")]
    ids = image_ids(paths)
    assert len(set(ids)) == 4 and ids[2] == "x__a" and ids[3] == "b_c"


def test_missing_listed_file_is_reported_not_fatal(tmp_path, tiny_checkpoint, image_files):
    missing = tmp_path / "images" / "gone.png"
    summary = predict(tiny_checkpoint(img_size=32), [image_files["rgb"][0], missing], tmp_path / "o", num_workers=0)
    assert summary.n_images == 1 and summary.failures == [(str(missing), "no such file")]


def test_rerun_into_input_folder_ignores_own_outputs(tmp_path, tiny_checkpoint, image_files):
    out = tmp_path / "images" / "predictions"
    for _ in range(2):
        summary = predict(tiny_checkpoint(img_size=32), tmp_path / "images", out, num_workers=0, overlays=True)
        assert summary.n_images == len(image_files)


def test_oom_halves_batch_without_losing_or_repeating(tmp_path, tiny_checkpoint, image_files, monkeypatch):
    forward, seen = UNetResNet34.forward, []

    def flaky_forward(self, x):
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        seen.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(UNetResNet34, "forward", flaky_forward)
    written = []
    save = writer_module._save
    monkeypatch.setattr(writer_module, "_save", lambda path, *a, **k: written.append(path.name) or save(path, *a, **k))
    summary = predict(tiny_checkpoint(img_size=32), tmp_path / "images", tmp_path / "o", batch_size=5, num_workers=0)
    assert summary.n_images == len(image_files) == 6
    assert sorted(written) == sorted(r["mask"] for r in _rows(summary.csv_path)) and len(set(written)) == 6
    assert max(seen) == 2 and sum(seen) == 6  # the learned chunk size sticks for the next batch


def test_multiclass_masks_hold_class_indices(tmp_path, tiny_checkpoint, image_files):
    names = ["irf", "srf", "ped"]  # training stores both lists in the meta
    ckpt = tiny_checkpoint(img_size=32, seg_classes=4, meta={"class_names": names, "seg_class_names": names})
    summary = predict(ckpt, [image_files["rgb"][0], image_files["jpeg"][0]], tmp_path / "o", num_workers=0)
    row = _rows(summary.csv_path)[0]
    assert {"prob_irf", "area_srf", "area_ped"} <= set(row)
    mask = _mask(summary.mask_dir / row["mask"])
    assert mask.max() < 4 and mask.shape in {s for _, s in image_files.values()}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError("cannot write (simulated)"), (OSError, r"cannot write \(simulated\); .* lists the 0 image\(s\)")),
        (KeyError("simulated"), (RuntimeError, "writing predictions failed: 'simulated'")),
    ],
)
def test_writer_error_propagates(tmp_path, tiny_checkpoint, image_files, monkeypatch, error, expected):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(writer_module, "_save", fail)
    with pytest.raises(expected[0], match=expected[1]):
        predict(tiny_checkpoint(img_size=32), tmp_path / "images", tmp_path / "o", batch_size=2, num_workers=0)


_SHARD_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
from fastmtl.engine.predict.job import predict
s = predict(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=2, num_workers=0)
with open(os.path.join(sys.argv[4], f"rank{os.environ['RANK']}.txt"), "w") as f:  # stdout of two ranks interleaves
    f.write(f"{s.world_size} {s.n_images} {s.n_failed}")
"""


def test_sharded_prediction_with_torchrun(tmp_path, tiny_checkpoint, image_files, corrupt_image):
    script = tmp_path / "shard.py"
    script.write_text(textwrap.dedent(_SHARD_SCRIPT))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    cmd += [str(tiny_checkpoint(img_size=32)), str(tmp_path / "images"), str(out), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every rank reports the totals over both shards
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["2 6 1", "2 6 1"]
    rows = _rows(out / "probabilities.csv")
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p, _ in image_files.values())
    assert len(list((out / "masks").glob("*.png"))) == 6
    assert not list(out.glob("probabilities.part*.csv"))


@pytest.mark.data
def test_predict_on_real_isic_images(tmp_path, tiny_checkpoint):
    if not ISIC_TRAIN.is_dir():
        pytest.skip(f"real ISIC 2017 data not found at {ISIC_TRAIN} (the shared data folder is absent)")
    paths = sorted(ISIC_TRAIN.glob("ISIC_*.jpg"))[:20]
    summary = predict(tiny_checkpoint(img_size=64), paths, tmp_path / "o", batch_size=8, num_workers=2)
    assert summary.n_images == 20 and summary.n_failed == 0 and summary.images_per_s > 0
    rows = _rows(summary.csv_path)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    with Image.open(paths[0]) as image:
        assert _mask(summary.mask_dir / rows[0]["mask"]).shape == (image.height, image.width)


@pytest.mark.parametrize("overlays", [False, True])
def test_an_img_size_the_checkpoint_does_not_take_is_refused_before_any_work(
    overlays, tmp_path, header_checkpoint, image_files
):
    """``predict(img_size=...)`` applies the checkpoint's own rule (a 64 px ResFormer takes multiples of 64) before
    it reads an image or builds the model, and leaves no output folder, no empty ``masks/`` behind."""
    checkpoint, out = header_checkpoint("resformer_mtl_nodfe", 64), tmp_path / "out"
    with pytest.raises(ValueError, match=r"--img-size 96 does not fit .* multiples of 64 up to 8192: 64, 128, 192"):
        predict(checkpoint, tmp_path / "images", out, num_workers=0, img_size=96, overlays=overlays)
    assert not out.exists()
