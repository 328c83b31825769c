"""The run table: the experiments (config file, default data folder, fixed overrides, time limit), the models
and ablation variants a row can train, and the columns and titles of each experiment's results table."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["COLUMNS", "DATA", "EXPERIMENTS", "MODELS", "REPO", "TITLES", "VARIANTS", "git"]

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
# name -> config file, default data folder, fixed overrides, default time limit per command (minutes, 0 = none),
# and whether it is meant for a GPU (a warning without one)
EXPERIMENTS = {
    "isic": {"config": REPO / "experiments" / "configs" / "isic_cpu.toml", "data_root": DATA / "isic2017"},
    "oct": {"config": REPO / "experiments" / "configs" / "oct_cpu.toml", "data_root": DATA / "oct"},
    "retouch-sample": {
        "config": REPO / "experiments" / "configs" / "retouch_sample_cpu.toml",
        "data_root": DATA / "oct",
    },
    # SPEC section 5 on one GPU: bf16 autocast (amp = "auto" in the config), channels-last, decoded images cached;
    # each command trains at most 9 minutes, saves, and the same command resumes until the 150 epochs are done.
    "isic-paper": {
        "config": REPO / "fastmtl" / "configs" / "isic2017_paper.toml",
        "data_root": DATA / "isic2017",
        "overrides": ["channels_last=true", "num_workers=8", "progress=false"],
        "time_limit": 9.0,
        "gpu": True,
    },
}
MODELS = ("resformer_mtl", "resformer_mtl_nodfe", "resformer_mtl_serial", "unet_resnet34_mtl", "unet_resnet34",
          "resnet34_cls")  # fmt: skip
# (column title, metric key in the result JSON); a metric the run did not produce prints as "-".
COLUMNS = {
    "isic": [("DSC", "dsc"), ("JI", "ji"), ("global Dice", "global_dice"), ("Acc", "acc"), ("Sen", "sen"),
             ("Spe", "spe"), ("MEL AUC", "auc_melanoma"), ("SK AUC", "auc_seborrheic_keratosis")],
    "oct": [("DSC", "dsc"), ("JI", "ji"), ("global Dice", "global_dice"), ("Acc", "acc"), ("Sen", "sen"),
            ("Spe", "spe"), ("fluid AUC", "auc_fluid")],
}  # fmt: skip
COLUMNS["isic-paper"] = COLUMNS["isic"]
COLUMNS["retouch-sample"] = [("DSC", "dsc"), ("JI", "ji"), ("IRF DSC", "dsc_irf"), ("SRF DSC", "dsc_srf"),
                             ("PED DSC", "dsc_ped"), ("global Dice", "global_dice")]  # fmt: skip
# Ablations of a model that are config changes rather than registered models: name -> (label, overrides).
# (DFE on/off and parallel/serial fusion are the registered models resformer_mtl_nodfe / resformer_mtl_serial.)
VARIANTS = {
    "head1": ("one-level classification head (e3 only)", ['model_options={cls_head="single"}']),
    "alpha0.1": ("alpha = 0.1", ["alpha=0.1"]),
    "alpha1": ("alpha = 1.0", ["alpha=1.0"]),
}
TITLES = {
    "isic": "ISIC 2017 (validation split carved from Training)",
    "oct": "Duke DME fluid segmentation (background/fluid head, 2 validation subjects)",
    "retouch-sample": "RETOUCH sample, 4-class configuration (qualitative: 6 training / 3 validation B-scans)",
    "isic-paper": "ISIC 2017, the paper's protocol on one GPU (224 px, 150 epochs)",
}


def git(*args: str) -> str:
    """``git ARGS`` in the checkout, its output stripped; "" when git or the checkout is missing."""
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
