import pytest
import torch

from eov_edge.core.errors import ConfigError
from eov_edge.core.tokenizer import TextTokenizer
from eov_edge.model import (
    PRESETS,
    EarthOneVisionConfig,
    EarthOneVisionForConditionalGeneration,
)
from eov_edge.model.config import default_feature_layers


def test_default_taps_are_quarter_depths():
    assert default_feature_layers(6) == [2, 3, 5, 6]
    assert default_feature_layers(27) == [7, 14, 21, 27]
    assert default_feature_layers(2) == [1, 2]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_consistent(name):
    config = EarthOneVisionConfig.from_preset(name)
    assert config.vision_config.num_channels == 16
    assert config.text_config.vocab_size == TextTokenizer.from_file().vocab_size
    assert config.grid_size % config.merge_size == 0
    assert config.multi_level_dim == len(config.feature_layers) * config.vision_config.hidden_size


def count_parameters(name: str) -> int:
    with torch.device("meta"):
        model = EarthOneVisionForConditionalGeneration(EarthOneVisionConfig.from_preset(name))
    return sum(p.numel() for p in model.parameters())


def test_eov_2b_builds_on_meta_with_about_two_billion_parameters():
    n = count_parameters("eov-2b")
    assert 1.8e9 <= n <= 2.4e9, n


def test_nano_is_small_enough_to_train_on_a_cpu():
    assert count_parameters("nano") < 15e6


def test_config_round_trips_through_json(tmp_path):
    config = EarthOneVisionConfig.from_preset("nano", feature_layers=[3, 6])
    config.save_pretrained(tmp_path)
    loaded = EarthOneVisionConfig.from_pretrained(tmp_path)
    assert loaded.feature_layers == [3, 6]
    assert loaded.vision_config.to_dict() == config.vision_config.to_dict()
    assert loaded.text_config.to_dict() == config.text_config.to_dict()
    assert loaded.preset == "nano"


def test_bad_configs_name_the_field_to_change():
    with pytest.raises(ConfigError, match="feature_layers"):
        EarthOneVisionConfig.from_preset("nano", feature_layers=[0, 9])
    with pytest.raises(ConfigError, match="feature_layers"):
        EarthOneVisionConfig.from_preset("nano", feature_layers=[5, 3])
    with pytest.raises(ConfigError, match="merge_size"):
        EarthOneVisionConfig.from_preset("nano", merge_size=4)  # 14x14 grid
    with pytest.raises(ConfigError, match="unknown preset"):
        EarthOneVisionConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="vision_stem must be one of"):
        EarthOneVisionConfig.from_preset("nano", vision_stem="cnn")
    base = EarthOneVisionConfig.from_preset("nano")
    vision = base.vision_config.to_dict()
    vision["num_channels"] = 3
    with pytest.raises(ConfigError, match="num_channels"):
        EarthOneVisionConfig(vision_config=vision, text_config=base.text_config.to_dict())


def test_conv_stem_needs_a_power_of_two_patch():
    # the shipped nano has the convolutional stem; the larger presets keep the ViT patch embedding
    assert EarthOneVisionConfig.from_preset("nano").vision_stem == "conv"
    assert EarthOneVisionConfig.from_preset("nano", vision_stem="patch").vision_stem == "patch"
    assert EarthOneVisionConfig.from_preset("small").vision_stem == "patch"
    base = EarthOneVisionConfig.from_preset("nano")
    vision = base.vision_config.to_dict()
    vision.update(patch_size=14, image_size=224)
    with pytest.raises(ConfigError, match="power of two >= 4"):
        EarthOneVisionConfig(vision_config=vision, text_config=base.text_config.to_dict(), vision_stem="conv")
    # an older config.json without the field is a patch stem
    data = base.to_dict()
    data.pop("vision_stem")
    assert EarthOneVisionConfig(**{k: v for k, v in data.items() if k != "model_type"}).vision_stem == "patch"
