"""TrainConfig: its sections, TOML loading (grouped and flat), ``--set`` overrides typed by the dataclass (dotted and
flat keys), validation errors, TOML round trip, the presets shipped as package data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastmtl.data import DATASET_KINDS
from fastmtl.engine.train.config import FLAT_KEYS, SECTIONS, TrainConfig, config_from_dict
from fastmtl.engine.train.config_file import apply_overrides, load_config, preset_names, to_toml


def test_overrides_are_typed_by_the_field():
    config = load_config(None, ["lr=1", "epochs=3", "compile=true", "channels_last=yes", "betas=[0.8, 0.95]",
                                "model=unet_resnet34_mtl", "cache_dir=off", "model_options.dfe=none"])  # fmt: skip
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.epochs == 3 and config.run.compile is True and config.run.channels_last is True
    assert config.optim.betas == (0.8, 0.95) and config.data.cache_dir == "off"
    assert config.model.name == "unet_resnet34_mtl" and config.model.options == {"dfe": "none"}


def test_dotted_keys_and_flat_keys_name_the_same_fields():
    flat = load_config(None, ["img_size=64", "model=resformer_mtl_nodfe", "data=synthetic", "data_options.n=12",
                              "lr=1e-3", "progress=false"])  # fmt: skip
    dotted = load_config(None, ["model.img_size=64", "model.name=resformer_mtl_nodfe", "data.kind=synthetic",
                                "data.options.n=12", "optim.lr=1e-3", "run.progress=false"])  # fmt: skip
    whole = load_config(None, ['model={name="resformer_mtl_nodfe", img_size=64}', 'data={kind="synthetic"}',
                               "data_options={n=12}", "optim.lr=1e-3", "run.progress=false"])  # fmt: skip
    assert flat == dotted == whole
    assert flat.model.img_size == 64 and flat.data.kind == "synthetic" and flat.data.options == {"n": 12}
    # the one table: every section field has exactly one flat key
    assert sorted(FLAT_KEYS.values()) == sorted(f"{s}.{f}" for s, cls in SECTIONS.items() for f in cls.__annotations__)


def test_grouped_and_flat_toml_files_load_to_the_same_config(tmp_path):
    grouped, flat = tmp_path / "grouped.toml", tmp_path / "flat.toml"
    grouped.write_text(
        '[model]\nname = "resformer_mtl_nodfe"\nimg_size = 96\n\n[model.options]\ndfe = "none"\n\n'
        '[data]\nkind = "oct"\n\n[data.options]\ntask = "fluid"\n\n[optim]\nepochs = 4\n'
    )
    flat.write_text(
        'model = "resformer_mtl_nodfe"\nimg_size = 96\ndata = "oct"\nepochs = 4\n\n'
        '[model_options]\ndfe = "none"\n\n[data_options]\ntask = "fluid"\n'
    )
    assert load_config(grouped) == load_config(flat)
    assert load_config(grouped).model.img_size == 96


def test_the_image_size_has_one_owner_and_one_rule():
    with pytest.raises(ValueError, match="model.options.img_size: the image size is model.img_size"):
        load_config(None, ["model_options.img_size=64"])
    for bad in (40, 16, 8208):
        with pytest.raises(ValueError, match=f"model.img_size must be a multiple of 16 from 32 up to 8192, got {bad}"):
            load_config(None, [f"img_size={bad}"])


def test_table_entries_update_and_whole_tables_replace():
    base = {"data_options": {"n": 16, "vendor": "Cirrus"}}
    assert apply_overrides(base, ["data_options.n=8"])["data"]["options"] == {"n": 8, "vendor": "Cirrus"}
    assert apply_overrides(base, ["data.options.n=8"])["data"]["options"] == {"n": 8, "vendor": "Cirrus"}
    assert apply_overrides(base, ["data_options={}"])["data"]["options"] == {}
    assert apply_overrides(base, ["data_options={}", "data_options.seed=1"])["data"]["options"] == {"seed": 1}
    assert base == {"data_options": {"n": 16, "vendor": "Cirrus"}}  # the input is not modified


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["epochs=2.5"], "config optim.epochs expects int, got 2.5"),
        (["lr=fast"], "config optim.lr expects float, got 'fast'"),
        (["deterministic=maybe"], "config run.deterministic expects bool"),
        (["betas=0.9"], "config optim.betas expects"),
        (["model_options=3"], "config model.options expects"),
        (["epochs=0"], "config optim.epochs must be >= 1, got 0"),
        (["val_fraction=1.5"], r"data.val_fraction must be in \(0, 1\)"),
        (["lr=-1"], "optim.lr must be a positive finite number"),
        (["data=imagenet"], "config data.kind='imagenet' is not valid; expected one of auto, isic2017"),
        (["unknown.key=1"], "unknown key 'unknown'; valid keys: model, model_options, img_size"),
        (["model.nope=1"], r"unknown key 'model.nope'; valid keys of \[model\]: model.name, model.options"),
        (["lr.x=1"], "optim.lr is not a table; only model.options, data.options take a.b"),
        (["optim={epochs=1, nope=2}"], r"unknown key\(s\) \['nope'\] in \[optim\]; valid keys there: epochs,"),
    ],
)
def test_bad_values_name_the_key(items, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, items)


def test_toml_round_trip_keeps_every_value(tmp_path):
    config = config_from_dict({
        "model": "resformer_mtl_serial",
        "model_options": {"dilations": [2, 4, 6], "eca_layout": "authors"},
        "data": "oct",
        "data_options": {"task": "fluid", "fractions": [0.6, 0.2, 0.2], "augment": {"degrees": 10.0}, "weird key": 1},
        "lr": 1.5e-4,
        "grad_clip": 1.0,
        "betas": (0.5, 0.9),
    })  # fmt: skip
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config))
    assert load_config(path) == config
    assert config_from_dict(config.to_dict()) == config


def test_replace_validates_like_overrides():
    config = TrainConfig()
    assert config.replace(epochs=2).optim.epochs == 2
    assert config.replace(model={"img_size": 64}).model == config.model.__class__(img_size=64)
    with pytest.raises(ValueError, match="config optim.batch_size expects int"):
        config.replace(batch_size="eight")


def test_data_kinds_come_from_the_dataset_table_and_import_loads_no_torch():
    for kind in ("auto", *DATASET_KINDS):
        assert config_from_dict({"data": kind}).data.kind == kind
    code = "import sys, fastmtl.engine.train.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the kind table is asked when a config is built, not when the module loads


def test_fastmtl_set_environment_overrides_come_first(monkeypatch):
    monkeypatch.setenv("FASTMTL_SET", "epochs=1  batch_size=2")
    config = load_config("quick", ["batch_size=3"])
    # the environment shrinks, an explicit --set still wins
    assert (config.optim.epochs, config.optim.batch_size) == (1, 3)
    monkeypatch.setenv("FASTMTL_SET", "epochs")
    with pytest.raises(ValueError, match="expects key=value"):
        load_config("quick")


def test_presets_are_the_shipped_files():
    assert {"quick", "demo", "isic2017_paper", "retouch_paper", "oct_fluid"} <= set(preset_names())
    quick = load_config("quick")
    assert (quick.model.name, quick.model.img_size, quick.optim.epochs) == ("resformer_mtl_nodfe", 64, 3)
    paper = load_config("isic2017_paper")
    assert (paper.model.img_size, paper.optim.epochs, paper.optim.batch_size, paper.optim.lr) == (224, 150, 8, 7e-5)
    assert load_config("retouch_paper").model.options == {"seg_classes": 4}
    assert load_config("demo").data.kind == "synthetic"


def test_the_flat_experiment_configs_load_through_the_flat_key_table():
    folder = Path(__file__).resolve().parents[2] / "experiments" / "configs"
    configs = {path.stem: load_config(path) for path in sorted(folder.glob("*.toml"))}
    assert {"isic_cpu", "oct_cpu", "retouch_sample_cpu"} <= set(configs)
    isic = configs["isic_cpu"]
    assert (isic.model.img_size, isic.data.kind, isic.data.val_source) == (48, "isic2017", "carve")
    assert isic.run.device == "cpu" and isic.optim.epochs == 4
    assert configs["oct_cpu"].data.options["task"] == "fluid-2class"
