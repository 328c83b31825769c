"""TrainConfig: TOML loading, ``--set`` overrides typed by the dataclass, validation errors, TOML round trip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastmtl.data import DATASET_KINDS
from fastmtl.engine.train.config import TrainConfig, apply_overrides, config_from_dict, load_config, to_toml


def test_overrides_are_typed_by_the_field():
    config = load_config(None, ["lr=1", "epochs=3", "compile=true", "channels_last=yes", "betas=[0.8, 0.95]",
                                "model=unet_resnet34_mtl", "cache_dir=off", "model_options.dfe=none"])  # fmt: skip
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.epochs == 3 and config.compile is True and config.channels_last is True
    assert config.betas == (0.8, 0.95) and config.cache_dir == "off"
    assert config.model_options == {"dfe": "none"}


def test_table_entries_update_and_whole_tables_replace():
    base = {"data_options": {"n": 16, "vendor": "Cirrus"}}
    assert apply_overrides(base, ["data_options.n=8"])["data_options"] == {"n": 8, "vendor": "Cirrus"}
    assert apply_overrides(base, ["data_options={}"])["data_options"] == {}
    assert apply_overrides(base, ["data_options={}", "data_options.seed=1"])["data_options"] == {"seed": 1}
    assert base == {"data_options": {"n": 16, "vendor": "Cirrus"}}  # the input is not modified


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["epochs=2.5"], "config epochs expects int, got 2.5"),
        (["lr=fast"], "config lr expects float, got 'fast'"),
        (["deterministic=maybe"], "config deterministic expects bool"),
        (["betas=0.9"], "config betas expects"),
        (["model_options=3"], "config model_options expects"),
        (["epochs=0"], "config epochs must be >= 1, got 0"),
        (["val_fraction=1.5"], r"val_fraction must be in \(0, 1\)"),
        (["lr=-1"], "lr must be a positive finite number"),
        (["data=imagenet"], "config data='imagenet' is not valid; expected one of auto, isic2017"),
        (["unknown.key=1"], "unknown key 'unknown'; valid keys: model, "),
    ],
)
def test_bad_values_name_the_key(items, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, items)


def test_toml_round_trip_keeps_every_value(tmp_path):
    config = TrainConfig(
        model="resformer_mtl_serial",
        model_options={"dilations": [2, 4, 6], "eca_layout": "authors"},
        data="oct",
        data_options={"task": "fluid", "fractions": [0.6, 0.2, 0.2], "augment": {"degrees": 10.0}, "weird key": 1},
        lr=1.5e-4,
        grad_clip=1.0,
        betas=(0.5, 0.9),
    )
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config))
    assert load_config(path) == config
    assert config_from_dict(config.to_dict()) == config


def test_replace_validates_like_overrides():
    config = TrainConfig()
    assert config.replace(epochs=2).epochs == 2
    with pytest.raises(ValueError, match="config batch_size expects int"):
        config.replace(batch_size="eight")


def test_data_kinds_come_from_the_dataset_table_and_import_loads_no_torch():
    for kind in ("auto", *DATASET_KINDS):
        assert TrainConfig(data=kind).data == kind
    code = "import sys, fastmtl.engine.train.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the kind table is asked when a config is built, not when the module loads


def test_fastmtl_set_environment_overrides_come_first(monkeypatch):
    from fastmtl.engine.train.config import load_config

    monkeypatch.setenv("FASTMTL_SET", "epochs=1  batch_size=2")
    config = load_config("quick", ["batch_size=3"])
    assert (config.epochs, config.batch_size) == (1, 3)  # the environment shrinks, an explicit --set still wins
    monkeypatch.setenv("FASTMTL_SET", "epochs")
    with pytest.raises(ValueError, match="expects key=value"):
        load_config("quick")
