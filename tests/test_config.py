import pytest

from mugv.cli import main
from mugv.config import ConfigError, RunConfig, from_dict, load_config, parse_overrides, to_dict


def test_debug_profile_loads_with_typed_values():
    cfg = load_config("debug")
    assert isinstance(cfg, RunConfig)
    assert cfg.model.preset == "debug" and cfg.model.depth == 2
    assert isinstance(cfg.optim.lr, float) and cfg.optim.betas == (0.9, 0.999)


def test_dotted_overrides_are_parsed_by_field_type():
    cfg = load_config("debug", ["--optim.lr=1e-3", "--train.steps", "7", "--logging.tensorboard=false",
                                "--optim.betas=[0.8, 0.95]", "--name=run one"])
    assert cfg.optim.lr == 1e-3 and cfg.train.steps == 7 and cfg.logging.tensorboard is False
    assert cfg.optim.betas == (0.8, 0.95) and cfg.name == "run one"


@pytest.mark.parametrize(
    "override, message",
    [
        ("--optim.lrr=1", "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("--modle.depth=1", "unknown config key 'modle.depth' (did you mean 'model.depth'?)"),
        ("--train.steps=many", "train.steps = 'many' must be an integer"),
        ("--optim.schedule=cosin", "optim.schedule = 'cosin' is not one of"),
        ("--data.i2v_prob=1.5", "data.i2v_prob = 1.5 must be within [0, 1]"),
        ("--model.num_heads=5", "not divisible by model.num_heads = 5"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("debug", [override])
    assert message in str(info.value)


def test_model_preset_applies_before_other_keys():
    cfg = load_config(None, ["--model.preset=10b", "--model.depth=4"])
    assert (cfg.model.hidden_size, cfg.model.num_heads, cfg.model.depth, cfg.model.text_dim) == (3456, 48, 4, 4096)


def test_unknown_profile_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'debug'"):
        load_config("debgu")


def test_profile_extends_its_parent(tmp_path):
    (tmp_path / "child.toml").write_text(f'extends = "debug"\nname = "child"\n[optim]\nlr = 0.5\n')
    cfg = load_config(str(tmp_path / "child.toml"))
    assert cfg.name == "child" and cfg.optim.lr == 0.5 and cfg.data.num_samples == load_config("debug").data.num_samples


def test_tree_round_trips_through_a_dict():
    cfg = load_config("debug", ["--optim.lr=2e-4"])
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_override_without_value_is_an_error():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--optim.lr"])


def test_dry_run_prints_the_resolved_tree(capsys):
    assert main(["train", "--config", "debug", "--dry-run", "--optim.lr=5e-5"]) == 0
    out = capsys.readouterr().out
    assert "[optim]" in out and "lr = 5e-05" in out and "hidden_size = 288" in out


def test_cli_reports_config_errors_with_exit_code_2(capsys):
    assert main(["train", "--dry-run", "--optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


def test_a_profile_name_wins_over_a_folder_of_the_same_name(tmp_path, monkeypatch):
    (tmp_path / "debug").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("debug").name == "debug"


def test_a_profile_in_the_working_directory_configs_comes_before_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.toml").write_text('extends = "debug"\nname = "my-demo"\n')
    cfg = load_config("demo")
    assert cfg.name == "my-demo" and cfg.model == load_config("debug").model  # `extends` found the shipped debug
