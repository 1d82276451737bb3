"""Bad input exits 2 with one line naming the problem (and the valid choices), no traceback, nothing written."""

import pytest

from harness.config import load_config
from harness.errors import BadInput

from .conftest import call_cli


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_unknown_method_lists_choices(tmp_path):
    result = call_cli("train", "method.name=nosuch", f"output_dir={tmp_path / 'out'}")
    assert_one_line_error(result, "nosuch", "dpo")
    assert not (tmp_path / "out").exists()


def test_unknown_config_key(tmp_path):
    result = call_cli("train", "train.nosuch_key=3", f"output_dir={tmp_path / 'out'}")
    assert_one_line_error(result, "train.nosuch_key")
    assert not (tmp_path / "out").exists()


def test_missing_data_file(tmp_path):
    missing = tmp_path / "missing.jsonl"
    result = call_cli("train", f"data.source={missing}", f"model.path={tmp_path}", f"output_dir={tmp_path / 'out'}")
    assert_one_line_error(result, str(missing))
    assert not (tmp_path / "out").exists()


def test_unknown_method_parameter_lists_parameters(tmp_path):
    result = call_cli("train", "method.gamma=0.5", f"output_dir={tmp_path / 'out'}")
    assert_one_line_error(result, "gamma", "beta", "label_smoothing")


def test_bad_value_and_missing_config_file(tmp_path):
    assert_one_line_error(call_cli("train", "train.learning_rate=-1"), "train.learning_rate")
    assert_one_line_error(call_cli("train", "--config", str(tmp_path / "nope.yaml")), "nope.yaml")
    assert_one_line_error(call_cli("train", "method.beta"), "KEY=VALUE")


def test_bad_row_names_row_and_field(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    result = call_cli("train", f"data.source={data}", f"model.path={tmp_path}", f"output_dir={tmp_path / 'out'}")
    assert_one_line_error(result, "row 1", "rejected")


def test_config_overrides_and_hash():
    cfg = load_config(None, ["method.beta=0.3", "train.max_steps=7", "model.lora.r=8"])
    assert cfg.method.params() == {"beta": 0.3}
    assert cfg.train.max_steps == 7 and cfg.model.lora.r == 8
    assert cfg.config_hash() == load_config(None, ["train.max_steps=7", "method.beta=0.3", "model.lora.r=8"]).config_hash()
    assert cfg.config_hash() != load_config(None, ["method.beta=0.1", "train.max_steps=7", "model.lora.r=8"]).config_hash()
    # where output goes does not change what is computed
    assert load_config(None, ["output_dir=/a"]).config_hash() == load_config(None, ["output_dir=/b"]).config_hash()


def test_yaml_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: dpo\n  beta: 0.2\ntrain:\n  max_steps: 3\n")
    cfg = load_config(path, ["train.max_steps=5"])
    assert cfg.method.params() == {"beta": 0.2} and cfg.train.max_steps == 5
    path.write_text("train:\n  typo_steps: 3\n")
    with pytest.raises(BadInput, match="train.typo_steps"):
        load_config(path)
