"""The algorithm registry (rlft/algorithms/registry.py) and the config schema agree, and run_rl builds from it."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from rlft.algorithms import registry
from rlft.config.schema import RlConfig
from rlft.config.sections import ALGORITHMS
from rlft.errors import ConfigError
from rlft.stages import common as stage_common


def test_the_schema_accepts_exactly_the_registered_algorithms():
    assert set(ALGORITHMS) == set(registry.ALGORITHMS)
    accepted = typing.get_args(RlConfig.model_fields["algorithm"].annotation)
    assert set(accepted) == set(registry.ALGORITHMS)
    for name in registry.ALGORITHMS:
        assert RlConfig(algorithm=name).algorithm == name


def test_each_entry_names_itself_and_its_trainer_config_is_the_one_the_checks_use():
    for name, algorithm in registry.ALGORITHMS.items():
        assert algorithm.name == name and callable(algorithm.build)
        assert dataclasses.is_dataclass(algorithm.config_class)
        assert stage_common.trainer_config_class(name) is algorithm.config_class


def test_an_unknown_algorithm_is_a_config_error_naming_the_registered_ones():
    with pytest.raises(ConfigError, match=r"rl.algorithm = 'ppp'.*did you mean 'ppo'"):
        registry.get_algorithm("ppp")
    assert registry.get_algorithm("grpo").config_class.__name__ == "GRPOConfig"


def test_run_rl_builds_the_trainer_from_the_registry(tmp_path, monkeypatch):
    """A registered entry is all run_rl needs: a stand-in builder is called with the stage's arguments."""
    from rlft import stages
    from tests.conftest import tiny_config

    class Built(Exception):
        pass

    seen = {}

    def build(model, tokenizer, args, engine, seeds, **kwargs):
        seen.update(args=args, seeds=seeds, kwargs=kwargs)
        raise Built

    entry = registry.ALGORITHMS["ppo"]
    monkeypatch.setitem(registry.ALGORITHMS, "ppo", dataclasses.replace(entry, build=build))
    config = tiny_config(output_dir=str(tmp_path), rl={"algorithm": "ppo", "init_from": "base"})
    with pytest.raises(Built):
        stages.run_rl(config)
    assert type(seen["args"]) is entry.config_class
    assert set(seen["kwargs"]) == {"batch_size", "callbacks", "max_nonfinite_steps"}
