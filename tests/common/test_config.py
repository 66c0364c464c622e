"""Config loading: good files load, and every kind of mistake names the file, the key and the problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from common.config import from_dict, load_config, parse_overrides, save_config, to_dict
from common.errors import ConfigError
from training.config import TrainConfig
from training.recipes import RECIPES, text_to_image_demo


@dataclass
class Inner:
    size: int = 8
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    rate: float = 0.5
    limit: Optional[float] = None
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    inner: Inner = field(default_factory=Inner)


def write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_good_file_loads_nested_values_and_coerces_ints_to_floats(tmp_path):
    path = write(tmp_path, {"name": "run", "rate": 2, "limit": 0.3, "sizes": [4], "inner": {"mode": "b"}})
    cfg = load_config(Outer, path)
    assert cfg == Outer(name="run", rate=2.0, limit=0.3, sizes=[4], inner=Inner(size=8, mode="b"))
    assert isinstance(cfg.rate, float)


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    # PyYAML reads `1e-4` as the string "1e-4"; a float field must still take it, and only it.
    assert load_config(Outer, write(tmp_path, "rate: 1e-4\nlimit: -2E+3\n")).rate == 1e-4
    assert load_config(Outer, None, ["limit=3e-2"]).limit == 0.03
    with pytest.raises(ConfigError, match="expected float, got str '1e-4x'"):
        load_config(Outer, write(tmp_path, "rate: 1e-4x\n", "bad.yaml"))


def test_unknown_key_names_file_and_dotted_key(tmp_path):
    path = write(tmp_path, {"inner": {"sise": 3}})
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    message = str(err.value)
    assert str(path) in message and "'inner.sise'" in message and "unknown key" in message
    assert "size" in message  # lists the keys that do exist


@pytest.mark.parametrize("data, key, expected", [
    ({"inner": {"size": "big"}}, "inner.size", "expected int, got str 'big'"),
    ({"rate": "fast"}, "rate", "expected float, got str"),
    ({"sizes": [1, "two"]}, "sizes[1]", "expected int"),
    ({"inner": {"mode": "c"}}, "inner.mode", "expected one of 'a', 'b'"),
    ({"inner": 5}, "inner", "expected a mapping"),
    ({"rate": True}, "rate", "expected float, got bool"),
])
def test_wrong_type_names_key_and_problem(tmp_path, data, key, expected):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert f"key '{key}'" in str(err.value) and expected in str(err.value)


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "a: [1, 2", "bad.yaml"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, write(tmp_path, "- 1\n- 2\n", "list.yaml"))


def test_range_checks_in_post_init_become_config_errors():
    with pytest.raises(ConfigError, match="zero_stage must be"):
        from_dict(TrainConfig, {"zero_stage": 7}, source="x.yaml")


def test_overrides_apply_over_file_over_recipe(tmp_path):
    path = write(tmp_path, {"optim": {"lr": 0.01}, "max_steps": 11})
    cfg = load_config(TrainConfig, path, ["max_steps=22", "--scaling.num_workers=3"], base=text_to_image_demo())
    assert (cfg.optim.lr, cfg.max_steps, cfg.scaling.num_workers) == (0.01, 22, 3)
    assert cfg.model.unet.base_channels == text_to_image_demo().model.unet.base_channels
    assert parse_overrides(["a.b=[1, 2]", "c=x"]) == {"a": {"b": [1, 2]}, "c": "x"}
    with pytest.raises(ConfigError, match="<command line>: key 'max_step'"):
        load_config(TrainConfig, None, ["max_step=3"], base=text_to_image_demo())


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_round_trips_through_its_saved_yaml(tmp_path, recipe):
    cfg = RECIPES[recipe]()
    path = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(TrainConfig, path) == cfg
    assert to_dict(load_config(TrainConfig, path)) == to_dict(cfg)
