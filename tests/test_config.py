import pytest

from uxbseg.config import PACKAGED_CONFIGS, Config, config_to_dict, load_config, save_config
from uxbseg.errors import ConfigError

from .conftest import ROOT


def test_defaults_are_the_seed_constants():
    cfg = Config()
    assert cfg.grid.shape == (32, 256, 256)
    assert cfg.data.image_size == 512 and cfg.data.batch_size == 1 and cfg.data.num_workers == 1
    assert cfg.loss.class_weights == (0.05, 0.45, 0.50)
    assert cfg.sampler.minority_fraction == 0.7
    assert (cfg.optim.lr_warmup, cfg.optim.lr_main, cfg.optim.warmup_epochs) == (2e-7, 2e-5, 20)
    assert cfg.optim.weight_decay == 1e-2
    assert (cfg.trainer.max_epochs, cfg.trainer.patience, cfg.trainer.min_delta) == (100, 10, 1e-6)
    assert cfg.model.feature_size == 96 and cfg.model.voxel_out_channels == 64
    assert cfg.model.fusion == "global" and cfg.model.fusion_hidden == 128
    assert cfg.data.val_split == "test"


def test_seed_yaml_matches_defaults_except_hub_id():
    cfg = load_config(ROOT / "configs" / "seed.yaml")
    assert cfg.model.pretrained_2d == "nvidia/segformer-b0-finetuned-ade-512-512"
    cfg.model.pretrained_2d = None
    assert config_to_dict(cfg) == config_to_dict(Config())


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            "trainer.max_epochs=3",
            "grid.shape=[32,32,64]",
            "model.pretrained_2d=null",
            "optim.lr_main=2e-3",  # YAML 1.1 reads this as a string; a float key accepts it
            "trainer.gradient_clip_norm=1",
        ],
    )
    assert cfg.trainer.max_epochs == 3 and cfg.grid.shape == (32, 32, 64)
    assert cfg.optim.lr_main == 2e-3 and cfg.trainer.gradient_clip_norm == 1.0
    assert cfg.model.pretrained_2d is None
    save_config(cfg, tmp_path / "c.yaml")
    assert config_to_dict(load_config(tmp_path / "c.yaml")) == config_to_dict(cfg)


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("trainer.max_epoch=3", "trainer.max_epoch"),
        ("model.fusion=sideways", "model.fusion"),
        ("grid.shape=[32,64]", "grid.shape"),
        ("optim.lr_main=fast", "optim.lr_main"),
        ("sampler.minority_fraction=1.5", "sampler.minority_fraction"),
        ("grid.features=[occupancy,classification]", "grid.features"),
        ("nonsense=1", "nonsense"),
        ("trainer.gradient_clip_norm=0", "trainer.gradient_clip_norm"),
        ("loss.dice_weight=-1", "loss.dice_weight"),
        ("trainer.max_time_minutes=0", "trainer.max_time_minutes"),
    ],
)
def test_invalid_keys_and_values_name_the_key(override, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config(None, [override])


def test_a_setting_of_two_kinds_takes_either_and_names_both():
    from uxbseg.config import config_from_dict

    for value in (True, False, "auto"):
        cfg = config_from_dict({"model": {"use_flash_attention": value}})
        assert cfg.model.use_flash_attention == value
    assert config_from_dict({}).model.use_flash_attention == "auto"
    with pytest.raises(ConfigError, match=r"must be true, false or 'auto', got 'yes'"):
        config_from_dict({"model": {"use_flash_attention": "yes"}})


def test_shipped_configurations_are_taken_by_name(tmp_path, monkeypatch):
    from uxbseg.config import packaged_config

    assert load_config("tiny") == load_config(packaged_config("tiny"))
    assert load_config("seed").model.feature_size == 96
    assert load_config("tiny").grid.shape == (32, 64, 64)
    with pytest.raises(ConfigError, match="one of the shipped configurations by name: seed, tiny"):
        load_config("tinny")
    monkeypatch.chdir(tmp_path)  # a file of that name, where it is given, is the user's own
    (tmp_path / "tiny").write_text("trainer:\n  max_epochs: 3\n")
    assert load_config("tiny").trainer.max_epochs == 3


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        (
            "model:\n  feature_size: 12\n  fusion: global\n  feature_size: 24\n",
            "feature_size",
            "2 and 4",
        ),
        ("grid:\n  shape: [8, 16, 16]\ngrid:\n  binning: seed\n", "grid", "1 and 3"),
    ],
)
def test_a_key_given_twice_is_an_error_naming_it(tmp_path, text, key, lines):
    """Plain YAML keeps the last of two equal keys; a setting written twice is refused instead,
    with the file, the key and both lines."""
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(
        ConfigError, match=rf"twice.yaml: key '{key}' is given twice \(lines {lines}\)"
    ):
        load_config(path)


def test_yaml_merge_keys_still_override_and_odd_keys_are_yamls_errors(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("grid: &g\n  shape: [8, 16, 16]\n  binning: seed\nmodel: {}\n")
    assert load_config(path).grid.shape == (8, 16, 16)
    path.write_text(
        "base: &b {shape: [8, 16, 16], binning: seed}\ngrid:\n  <<: *b\n  shape: [8, 32, 32]\n"
    )
    with pytest.raises(ConfigError, match="base"):  # merged, then the unknown section refused
        load_config(path)
    path.write_text("grid:\n  <<: {shape: [8, 16, 16], binning: seed}\n  shape: [8, 32, 32]\n")
    assert load_config(path).grid.shape == (8, 32, 32)  # the key given overrides the merged one
    path.write_text("grid:\n  ? [1, 2]\n  : 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_config_saved_with_a_byte_order_mark_loads_whatever_the_locale(tmp_path, encoding):
    """Windows editors save UTF-8 with a BOM, or UTF-16 ("Unicode"): YAML reads both from the
    bytes; a comment in any language is no error."""
    path = tmp_path / "bom.yaml"
    path.write_text("# résumé: tuiles de 100 m\nmodel:\n  feature_size: 12\n", encoding=encoding)
    assert load_config(path).model.feature_size == 12


@pytest.mark.parametrize("name", PACKAGED_CONFIGS)
def test_the_shipped_configurations_load_with_each_key_once(name):
    assert load_config(name).grid.shape
