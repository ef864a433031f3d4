"""Named distillation recipes: `distill.recipe=NAME` on the command line, DistillConfig.from_recipe in
Python, the default recipe, and the class-KD weight's scaling with the number of classes."""
import pytest

from locdistill.config import DEFAULT_RECIPE, RECIPES, DistillConfig, load_config
from locdistill.errors import ConfigError

TERMS = ("ld_weight", "vlr_weight", "kd_weight", "crosshead_ld_weight", "crosshead_kd_weight",
         "crosshead_box_weight")


def weights(d):
    return tuple(getattr(d, k) for k in TERMS)


def test_each_recipe_sets_its_terms_and_is_recognised():
    # hand-written: (main LD, VLR, KD, cross-head LD, cross-head KD, cross-head box) on 80 classes
    expected = {"ld": (0.25, 0, 0, 0, 0, 0), "full": (0.25, 0.25, 10, 0, 0, 0), "crosshead": (0, 0, 0, 3, 1, 2),
                "crosshead_ld": (0.25, 0, 0, 3, 1, 2), "crosshead_full": (0.25, 0.25, 10, 3, 1, 2)}
    assert set(expected) == set(RECIPES)
    for name, w in expected.items():
        d = DistillConfig.from_recipe(name, "t.py", "t.pth")
        assert weights(d) == w and d.teacher_config == "t.py"
        assert d.recipe(80) == name
    assert DistillConfig.from_recipe("ld", ld_weight=0.5).recipe(80) == "custom"


def test_default_is_the_safe_recipe_and_paper_factories_keep_their_meaning():
    assert DistillConfig().recipe(80) == DEFAULT_RECIPE == "crosshead_ld"
    assert weights(DistillConfig.paper("t", "c")) == (0.25, 0.25, 10, 0, 0, 0)
    assert DistillConfig.paper("t", "c").reduction == "sum"
    assert weights(DistillConfig.crosskd("t", "c")) == (0, 0, 0, 3, 1, 2)


def test_class_kd_weight_scales_with_the_classes():
    # our KD is a mean over classes: 10 per 80 classes -> 1.25 on 10, 2.5 on 20
    assert DistillConfig.from_recipe("full", num_classes=10).kd_weight == pytest.approx(1.25)
    assert DistillConfig.from_recipe("crosshead_full", num_classes=20).kd_weight == pytest.approx(2.5)
    assert DistillConfig.from_recipe("full", num_classes=10).recipe(10) == "full"
    assert DistillConfig.from_recipe("full", num_classes=10).recipe(80) == "custom"


def test_recipe_override_then_single_terms():
    cfg = load_config("demo/gfl_r18_digits", ["distill.ld_weight=9", "distill.recipe=crosshead_full",
                                              "distill.vlr_weight=0.5"])
    d = cfg.distill
    assert d.ld_weight == 0.25  # set before the recipe: the recipe wins
    assert d.vlr_weight == 0.5  # set after: the key wins
    assert d.kd_weight == pytest.approx(1.25) and d.crosshead_box_weight == 2.0
    # the class count may come later on the command line; the recipe uses the final one
    cfg = load_config("demo/gfl_r18_digits", ["distill.recipe=full", "model.num_classes=20"])
    assert cfg.distill.kd_weight == pytest.approx(2.5)


def test_unknown_recipe_names_the_recipes():
    with pytest.raises(ConfigError, match=r"unknown distillation recipe 'crossheed'.*did you mean crosshead\?"):
        load_config("demo/gfl_r18_digits", ["distill.recipe=crossheed"])
    with pytest.raises(ConfigError, match="recipes: ld, full, crosshead"):
        DistillConfig.from_recipe("nope")


def test_demo_configs_name_their_recipe():
    for name, recipe in (("demo/ld_r34_r18_digits", "ld"), ("demo/crosshead_r34_r18_digits", "crosshead")):
        cfg = load_config(name)
        assert cfg.distill.recipe(cfg.model.num_classes) == recipe


def test_recipe_kd_weight_follows_the_class_count_the_data_sets():
    """A COCO-sized config (80 classes) with recipe `full` trained on 10-class data: training sets
    model.num_classes from the data, and the recipe's class-KD weight follows it (10 → 1.25);
    an explicitly chosen weight stays as it is."""
    import torch

    from locdistill.engine.train import build_training

    tiny = ["data.digits_train=8", "data.digits_val=4", "data.workers=0", "model.num_classes=80"]
    cfg = load_config("demo/ld_r34_r18_digits", tiny + ["distill.recipe=full"])
    assert cfg.distill.kd_weight == 10.0
    build_training(cfg, torch.device("cpu"))
    assert cfg.model.num_classes == 10 and cfg.distill.kd_weight == pytest.approx(1.25)
    cfg = load_config("demo/ld_r34_r18_digits", tiny + ["distill.recipe=full", "distill.kd_weight=3.0"])
    build_training(cfg, torch.device("cpu"))
    assert cfg.distill.kd_weight == 3.0
