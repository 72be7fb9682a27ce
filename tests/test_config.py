"""Config loading: typed fields, unknown keys, precedence, YAML errors, resolved config on disk."""
from __future__ import annotations

import pytest
import yaml

from cml_bench.config import ConfigError, RunConfig, TrainConfig, build_dataclass, load_yaml, resolve
from cml_bench.runner import resolve_config, strategy_label


def test_defaults_and_types():
    config = resolve({})
    assert isinstance(config, RunConfig)
    assert config.train.batch_size == 10 and config.train.epochs == 1
    assert build_dataclass(TrainConfig, {"lr": 1}).lr == 1.0  # int accepted for float


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"Unknown config key 'train.lrr'"):
        resolve({"train": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"Unknown config key 'modle'"):
        resolve({"modle": {}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train.batch_size: expected an integer"):
        resolve({"train": {"batch_size": "ten"}})
    with pytest.raises(ConfigError, match=r"model.pretrained: expected true or false"):
        resolve({"model": {"pretrained": "yes"}})


def test_precedence_defaults_benchmark_yaml_cli():
    # synth-cocoseq's defaults set resnet10t and lr 5e-4; YAML then CLI override them in turn.
    config = resolve_config({})
    assert config.model.backbone == "resnet10t" and config.train.lr == pytest.approx(5e-4)
    config = resolve_config({"train": {"lr": 0.01}}, {"train": {"lr": 0.02}})
    assert config.train.lr == pytest.approx(0.02)


def test_head_suffix_sets_model_head_and_options_resolved():
    config = resolve_config({"strategy": {"name": "prs+ssca"}})
    assert config.model.head == "ssca"
    assert strategy_label(config) == "prs+ssca"
    assert config.strategy.options == {"buffer_size": None, "rho": None, "replay_batch_size": 10}
    assert config.benchmark.options["scale"] == pytest.approx(0.3)


def test_a_resolved_run_carries_its_specs_typed_options_head_and_label():
    from cml_bench.resolved import ResolvedRun, resolve_run

    run = resolve_run({"strategy": {"name": "prs+cos", "options": {"rho": 0.5}}, "seed": 2})
    assert (run.head, run.label, run.name) == ("cos", "prs+cos", "prs+cos on synth-cocoseq, seed 2")
    assert run.strategy.name == "prs" and isinstance(run.strategy_options, run.strategy.options)
    assert run.strategy_options.rho == 0.5 and run.benchmark_options.scale == pytest.approx(0.3)
    assert ResolvedRun.of(run) is run  # resolved once, then passed along
    # a resolved config (e.g. a run folder's config.yaml) resolves to the same run, and is left as it was
    stored = resolve({"strategy": {"name": "prs+cos"}})
    before = stored.to_dict()
    assert ResolvedRun.of(stored).config.model.head == "cos" and stored.to_dict() == before


def test_strategy_and_benchmark_options_validated():
    with pytest.raises(ConfigError, match=r"Unknown config key 'strategy.options.lambda'"):
        resolve_config({"strategy": {"name": "ewc", "options": {"lambda": 1.0}}})
    with pytest.raises(ConfigError, match=r"benchmark.options.scale: expected a number"):
        resolve_config({"benchmark": {"options": {"scale": "big"}}})


def test_unknown_head_in_yaml():
    with pytest.raises(ConfigError, match=r"Unknown model.head 'attn'. Available: pooled, cos, ssca"):
        resolve_config({"model": {"head": "attn"}})


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(listy)


def test_round_trip_through_yaml(tmp_path):
    config = resolve_config({"strategy": {"name": "ewc"}, "seed": 3})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    again = resolve_config(load_yaml(path))
    assert again == config


@pytest.mark.parametrize("text,value", [("1e-3", 0.001), ("1E3", 1000.0), (".5", 0.5), ("5.", 5.0), ("1_000.5", 1000.5),
                                        ("-2e+5", -2e5), ("+.5e-1", 0.05), ("0.01", 0.01)])
def test_every_python_float_spelling_is_a_number(text, value, tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) and 1.0e3 (no exponent sign) as strings; --set and files must not."""
    from cml_bench.cli import _parse_set

    assert _parse_set([f"strategy.options.rho={text}"]) == {"strategy": {"options": {"rho": value}}}
    (tmp_path / "c.yaml").write_text(f"strategy:\n  options: {{rho: {text}}}\n")
    assert load_yaml(tmp_path / "c.yaml") == {"strategy": {"options": {"rho": value}}}
    if value > 0:
        assert resolve(_parse_set([f"train.lr={text}"])).train.lr == value
    assert _parse_set(["model.backbone=1e3", "seed=12"]) == {"model": {"backbone": 1000.0}, "seed": 12}


def test_non_finite_numbers_are_refused():
    for text in ("inf", "nan", ".inf", "-.inf", ".nan"):
        with pytest.raises(ConfigError, match="train.lr: expected a (finite )?number.*"):
            resolve({"train": {"lr": yaml.safe_load(text)}})
    with pytest.raises(ConfigError, match="infinite and NaN values are not accepted"):
        resolve({"train": {"lr": "inf"}})
