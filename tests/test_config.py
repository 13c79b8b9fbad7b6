"""Profiles resolve into validated, frozen dataclasses; mistakes name the key and the file."""

from __future__ import annotations

import dataclasses
import math

import pytest

from stmkit.config import CONFIG_DIR, ConfigError, load_profile, parse_overrides, replace


@pytest.mark.parametrize("name", ["smoke", "cpu-demo", "paper"])
def test_shipped_profiles_load(name):
    p = load_profile(name)
    assert p.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 3


def test_every_yaml_in_configs_is_a_valid_profile():
    for path in CONFIG_DIR.glob("*.yaml"):
        load_profile(path.stem)


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_the_key_and_file(tmp_path):
    path = _write(tmp_path, "training:\n  learnig_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*training.*'learnig_rate'"):
        load_profile(path)


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_profile(_write(tmp_path, "modle: {name: x}\n"))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.batch_size: expected an integer"):
        load_profile(_write(tmp_path, "training:\n  batch_size: four\n"))


def test_impossible_value_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'tau' must be > 1"):
        load_profile(_write(tmp_path, "masking:\n  tau: 0.5\n"))
    with pytest.raises(ConfigError, match="is not one of"):
        load_profile(_write(tmp_path, "training:\n  finetune: qlora\n"))


def test_yaml_scientific_notation_and_inf():
    p = load_profile("smoke", "training.learning_rate=2e-5, masking.tau=inf")
    assert p.training.learning_rate == 2e-5
    assert math.isinf(p.masking.tau)


def test_overrides_are_validated_and_name_the_key():
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_profile("smoke", {"training.nope": 1})
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides("training.lr")


def test_replace_returns_a_new_validated_profile():
    p = load_profile("smoke")
    q = replace(p, {"masking.tau": 10})
    assert q.masking.tau == 10 and p.masking.tau == 2.5
    with pytest.raises(ConfigError):
        replace(p, {"masking.tau": 1})


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cpu-demo"):
        load_profile("nonexistent-profile")


def test_list_overrides_are_yaml_lists():
    p = load_profile("smoke", "eval.tasks=[mbpp, arc_easy], masking.tau=3")
    assert p.eval.tasks == ("mbpp", "arc_easy") and p.masking.tau == 3
    with pytest.raises(ConfigError, match=r"override 'eval.tasks=\[mbpp': .*not valid YAML"):
        load_profile("smoke", "eval.tasks=[mbpp")


def test_an_extends_cycle_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match=r"'extends' makes a cycle: a.yaml -> b.yaml -> a.yaml"):
        load_profile(tmp_path / "a.yaml")


def test_a_missing_profile_file_lists_the_profiles():
    with pytest.raises(ConfigError, match=r"configs/x.yaml does not exist \(profiles: .*cpu-demo"):
        load_profile("configs/x.yaml")
