import json

import pytest

from locdistill.config import (Config, apply_overrides, config_from_dict, config_to_dict, list_configs,
                               load_config, save_config, valid_keys)
from locdistill.errors import ConfigError


def test_shipped_configs_load_by_name_and_path():
    names = list_configs()
    assert "gfl/gfl_r50_fpn_coco_1x" in names and "demo/gfl_r18_digits" in names
    for n in names:
        cfg = load_config(n)
        assert isinstance(cfg, Config)
        assert cfg.name == n.split("/")[-1]
    from locdistill.config import CONFIG_DIR
    cfg = load_config(CONFIG_DIR / "gfl" / "gfl_r101_fpn_coco_1x.py")
    assert cfg.model.backbone.depth == 101
    assert load_config("gfl_r18_fpn_coco_1x").model.backbone.depth == 18  # bare file name


def test_derived_config_does_not_mutate_base():
    a = load_config("gfl/gfl_r101_fpn_mstrain_2x_coco")
    b = load_config("gfl/gfl_r50_fpn_coco_1x")
    assert a.model.backbone.depth == 101 and a.train.epochs == 24 and a.data.train_short_range == (480, 800)
    assert b.model.backbone.depth == 50 and b.train.epochs == 12 and b.data.train_short_range is None


def test_overrides_are_typed():
    cfg = load_config("gfl/gfl_r50_fpn_coco_1x",
                      ["train.epochs=3", "train.base_lr=1", "data.img_scale=[640, 480]",
                       "data.dataset=digits", "train.lr=None", "model.backbone.norm_eval=False"])
    assert cfg.train.epochs == 3
    assert cfg.train.base_lr == 1.0 and isinstance(cfg.train.base_lr, float)
    assert cfg.data.img_scale == (640, 480)
    assert cfg.data.dataset == "digits"
    assert cfg.model.backbone.norm_eval is False


@pytest.mark.parametrize("bad,needle", [
    ("train.epoch=3", "train.epochs"),          # unknown key suggests the close one
    ("train.epochs=three", "expected an integer"),
    ("train.epochs=1.5", "expected an integer"),
    ("model.backbone.norm_eval=1", "True or False"),
    ("data.img_scale=(1,2,3)", "expected 2 values"),
    ("epochs", "key=value"),
])
def test_bad_overrides_name_the_key(bad, needle):
    with pytest.raises(ConfigError) as e:
        load_config("gfl/gfl_r50_fpn_coco_1x", [bad])
    assert needle in str(e.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), ["model.head.nonsense=1"])
    assert "model.head.reg_max" in str(e.value)


def test_unknown_config_name_suggests():
    with pytest.raises(ConfigError) as e:
        load_config("gfl/gfl_r50_fpn_coco_1X")
    assert "gfl/gfl_r50_fpn_coco_1x" in str(e.value)


def test_round_trip_dict_json_and_py_snapshot(tmp_path):
    cfg = load_config("demo/gfl_r18_digits", ["train.epochs=5"])
    d = config_to_dict(cfg)
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    save_config(cfg, tmp_path)
    again = load_config(tmp_path / "config.py")
    assert again == cfg
    assert json.loads((tmp_path / "config.json").read_text()) == d
    assert set(valid_keys(cfg)) >= {"train.epochs", "model.head.reg_max", "data.batch_size"}


def test_config_file_errors(tmp_path):
    p = tmp_path / "broken.py"
    p.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="broken.py"):
        load_config(p)
    p2 = tmp_path / "noconfig.py"
    p2.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="module-level"):
        load_config(p2)
    with pytest.raises(ConfigError, match="unknown config key 'model.bogus'"):
        config_from_dict({"model": {"bogus": 1}})


def _config_file(tmp_path, line: str):
    path = tmp_path / "my_experiment.py"
    path.write_text("from locdistill.config import load_config\n"
                    "config = load_config('demo/gfl_r18_digits')\n" + line + "\n")
    return path


def test_config_file_with_a_misspelt_attribute_is_refused_like_set(tmp_path, capsys):
    from locdistill.cli import main

    path = _config_file(tmp_path, "config.train.epoch = 3")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    msg = str(e.value)
    assert str(path) in msg and "unknown config key 'train.epoch'" in msg and "did you mean train.epochs" in msg
    work = tmp_path / "wd"
    assert main(["train", str(path), "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "train.epoch'" in err and "Traceback" not in err and not work.exists()
    # following the hint fixes it
    path.write_text(path.read_text().replace("train.epoch =", "train.epochs ="))
    assert load_config(str(path)).train.epochs == 3


def test_config_file_with_a_wrong_type_names_the_key_before_building_anything(tmp_path, capsys):
    from locdistill.cli import main

    path = _config_file(tmp_path, "config.train.epochs = '3'\nconfig.model.backbone.depth = 18.5")
    with pytest.raises(ConfigError, match=r"my_experiment.py: config key 'model.backbone.depth': expected an integer"):
        load_config(str(path))
    work = tmp_path / "wd"
    assert main(["train", str(path), "--work-dir", str(work)]) == 2
    assert "expected an integer" in capsys.readouterr().err and not work.exists()


def test_config_file_values_are_coerced_like_set_values(tmp_path):
    path = _config_file(tmp_path, "config.train.milestones = [3, 4]\nconfig.train.base_lr = 1")
    cfg = load_config(str(path))
    assert cfg.train.milestones == (3, 4) and isinstance(cfg.train.base_lr, float)
    assert cfg.name == "my_experiment"
