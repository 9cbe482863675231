"""training.sweep.SweepConfig (the typed sweep config) and TrainConfig's switch detection."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import pytest

from serving.paths import REPO_ROOT
from training import config as train_config
from training import sweep
from training.config import ConfigError, TrainConfig
from training.sweep import SweepConfig, load_config


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------------------
# SweepConfig
# --------------------------------------------------------------------------------------
def test_one_config_error_class():
    assert sweep.ConfigError is ConfigError  # the sweep raises the trainer's ConfigError, not a twin


def test_defaults(tmp_path):
    config = load_config(_write(tmp_path / "tiny.json", {"epochs": 3}))
    assert config == SweepConfig(name="tiny", epochs=3)  # the name defaults to the file's stem
    assert config.variants == train_config.VARIANTS and config.strides == ((1.0, 1.0, 2.0, 2.0, 2.0),)
    assert config.seeds == (0,) and config.datasets == ("cifar10",) and config.args == {} and config.nproc == 1
    assert config.out is None and config.data_dir is None and config.description is None


def test_a_good_file_round_trips(tmp_path):
    data = {"name": "grid", "description": "d", "out": "runs/grid", "variants": ["hybrid", "resnet18"],
            "strides": ["1,1,2,2,2", [1, 1, 3, 1, 3]], "seeds": [0, 1], "datasets": ["cifar10", "cifar100"], "epochs": 5,
            "args": {"batch-size": 64, "nesterov": True}, "nproc": 2, "data_dir": "/data"}
    config = load_config(_write(tmp_path / "c.json", data))
    assert config == SweepConfig(name="grid", description="d", out="runs/grid", variants=("hybrid", "resnet18"),
                                 strides=((1.0, 1.0, 2.0, 2.0, 2.0), (1.0, 1.0, 3.0, 1.0, 3.0)), seeds=(0, 1),
                                 datasets=("cifar10", "cifar100"), epochs=5, args={"batch-size": 64, "nesterov": True},
                                 nproc=2, data_dir="/data")
    assert SweepConfig.from_dict(data, default_name="unused") == config
    assert config.args is not data["args"]  # a copy: the file's dict is not shared
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 6  # type: ignore[misc]
    assert dataclasses.replace(config, epochs=6).epochs == 6  # derived protocols (the GPU window) go through replace
    assert len(sweep.plan_runs(config)) == 2 * 2 * 2 * 2


def test_one_check_per_field():
    assert set(sweep._CHECKS) == {f.name for f in dataclasses.fields(SweepConfig)}


@pytest.mark.parametrize("data, message", [
    ([1, 2], "the config must be a JSON object"),
    ({"epochs": 1, "colour": "red"}, r"unknown keys \['colour'\]; allowed: \['args', 'data_dir', "),
    ({"variants": ["resnet18"]}, "'epochs' is required"),
    ({"epochs": 1, "variants": "hybrid"}, "'variants' must be a non-empty list"),
    ({"epochs": 1, "seeds": []}, "'seeds' must be a non-empty list"),
    ({"epochs": 1, "variants": [], "seeds": "x"}, "'variants' must be a non-empty list"),  # the first fault, in key order
    ({"epochs": 1, "variants": ["resnet50"]}, r"unknown variants \['resnet50'\]; expected some of \['resnet18'"),
    ({"epochs": 1, "variants": [["hybrid"]]}, r"unknown variants \[\['hybrid'\]\]"),
    ({"epochs": 1, "datasets": ["mnist"]}, r"unknown datasets \['mnist'\]; expected some of \['cifar10', 'cifar100'\]"),
    ({"epochs": 1, "strides": ["1,1,2,2"]}, "strides must be 5 comma-separated numbers"),
    ({"epochs": 1, "strides": [2]}, "'strides' entries must be strings or lists of 5 numbers, got 2"),
    ({"epochs": 1, "seeds": [0, 1.5]}, "'seeds' must be integers"),
    ({"epochs": 1, "seeds": [True]}, "'seeds' must be integers"),
    ({"epochs": 0}, "'epochs' must be a positive integer"),
    ({"epochs": "3"}, "'epochs' must be a positive integer"),
    ({"epochs": True}, "'epochs' must be a positive integer"),
    ({"epochs": 1, "args": []}, "'args' must be an object of train flags"),
    ({"epochs": 1, "args": {"colour": 1}}, r"'args' names unknown train flags \['colour'\]"),
    ({"epochs": 1, "args": {"seed": 3}}, r"'args' may not set \['seed'\]; the sweep sets them per run"),
    ({"epochs": 1, "args": {"--resume": True}}, r"'args' may not set \['resume'\]"),
    ({"epochs": 1, "nproc": 0}, "'nproc' must be a positive integer"),
    ({"epochs": 1, "name": None}, "'name' must be a string"),
    ({"epochs": 1, "out": 3}, "'out' must be a string or null"),
])
def test_bad_input_gives_one_sentence(tmp_path, data, message):
    path = _write(tmp_path / "c.json", data)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text  # names the file, one line
    with pytest.raises(ConfigError, match=message):  # the same check without a file
        SweepConfig.from_dict(data, default_name="c")


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config .*missing.json"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match=r"bad.json is not valid JSON"):
        load_config(tmp_path / "bad.json")


def test_run_flags_and_commands_read_the_dataclass(tmp_path):
    config = SweepConfig(name="t", epochs=4, args={"batch-size": 8, "nesterov": True, "no-progress": False})
    (run,) = sweep.plan_runs(dataclasses.replace(config, variants=("hybrid",)))
    command = sweep.train_command(run, config, tmp_path, None, 1)
    assert command[3:] == ["--variant", "hybrid", "--dataset", "cifar10", "--strides", "1,1,2,2,2", "--seed", "0",
                           "--epochs", "4", "--out", str(tmp_path), "--resume", "--batch-size", "8", "--nesterov"]
    assert sweep.RESERVED_FLAGS == {"variant", "dataset", "strides", "seed", "epochs", "out", "resume", "data-dir",
                                    "overwrite", "name"}


def test_example_configs_load():
    for path in sorted((REPO_ROOT / "training" / "sweeps").glob("*.json")):
        config = load_config(path)
        assert config.name == json.loads(path.read_text())["name"] and sweep.plan_runs(config)


# --------------------------------------------------------------------------------------
# TrainConfig: which fields are switches
# --------------------------------------------------------------------------------------
BOOL_FIELDS = {"shared_stride", "zero_init_residual", "nesterov", "decay_norm_bias", "flip", "download", "resume",
               "overwrite", "keep_state", "compile", "deterministic", "progress"}


def test_switch_detection_covers_exactly_the_bool_fields():
    assert train_config._SWITCHES == BOOL_FIELDS
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert all(defaults[name] in (True, False, None) for name in BOOL_FIELDS)
    parser = train_config.build_parser()
    switches = {a.dest for a in parser._actions if a.nargs == 0 and a.dest != "help"}
    assert switches == BOOL_FIELDS  # store_true / store_false, no value
    on_by_default = {a.dest for a in parser._actions if a.dest in BOOL_FIELDS and a.default is True}
    assert {flag for flag, name in train_config.FLAGS.items() if name in on_by_default} == {
        "no-decay-norm-bias", "no-flip", "no-progress"}


@pytest.mark.parametrize("hint, switch", [
    (bool, True), (bool | None, True), (Optional[bool], True), (None | bool, True),  # noqa: UP045 - typing.Optional too
    (int, False), (int | None, False), (bool | int, False), (str, False), (tuple[float, ...] | None, False),
])
def test_is_switch(hint, switch):
    assert train_config._is_switch(hint) is switch
