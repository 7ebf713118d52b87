"""Values read as a user means them: each field types its own text, so YAML 1.1's readings
(``no`` -> False, ``1e-3`` -> a string, ``null`` -> None) never reach a field of another type."""
import pytest

from sslvit.config import ConfigError, build_config
from sslvit.recipes.dino import DINORunConfig
from sslvit.recipes.mae import MAERunConfig


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


TRAPS = [  # (key, text as typed, value the field gets)
    ("train.precision", "no", "no"),  # str: YAML 1.1 would give False
    ("train.precision", "fp32", "fp32"),
    ("data", "on", "on"),  # str: YAML would give True
    ("data", "off", "off"),
    ("out", "yes", "yes"),
    ("out", "null", "null"),  # a plain str keeps null as text
    ("out", "1e3", "1e3"),  # str: not a number
    ("train.blr", "1e-3", 1e-3),  # float: YAML 1.1 reads 1e-3 (no dot) as a string
    ("train.blr", "2", 2.0),
    ("train.lr", "null", None),  # Optional[float]: null / none / ~ / empty are None
    ("train.lr", "None", None),
    ("train.lr", "~", None),
    ("train.lr", "", None),
    ("train.lr", "5e-4", 5e-4),
    ("train.epochs", "3", 3),
    ("train.epochs", "3.0", 3),
    ("train.epochs", "1e2", 100),
    ("resume", "no", False),  # bool: the YAML words mean what they say
    ("resume", "on", True),
    ("resume", "True", True),
    ("resume", "0", False),
    ("train.betas", "0.5,1", (0.5, 1.0)),  # tuple: comma-separated or a YAML list
    ("train.betas", "[0.5,1]", (0.5, 1.0)),
    ("train.betas", "[0.5, 1e-1]", (0.5, 0.1)),
    ("train.clip_grad", "3", 3.0),
]


@pytest.mark.parametrize("key, text, expected", TRAPS)
def test_a_command_line_value_is_typed_by_its_field(key, text, expected):
    value = _get(build_config(MAERunConfig, [f"--{key}", text]), key)
    assert value == expected and type(value) is type(expected), (value, expected)
    value = _get(build_config(MAERunConfig, [f"{key}={text}"]), key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("key, text, expected", [t for t in TRAPS if t[1] != ""])
def test_a_yaml_value_is_typed_by_its_field(key, text, expected, tmp_path):
    *sections, name = key.split(".")
    lines, indent = [], ""
    for s in sections:
        lines.append(f"{indent}{s}:")
        indent += "  "
    lines.append(f"{indent}{name}: {text}")
    f = tmp_path / "c.yaml"
    f.write_text("\n".join(lines) + "\n")
    value = _get(build_config(MAERunConfig, ["--config", str(f)]), key)
    assert value == expected and type(value) is type(expected)


def test_the_digits_preset_still_applies_its_typed_values():
    cfg = build_config(DINORunConfig, [])
    assert cfg.data == "digits" and isinstance(cfg.train.blr, float) and isinstance(cfg.train.epochs, int)


@pytest.mark.parametrize("key, text, words", [
    ("train.betas", "0.9", "takes 2 values"),
    ("train.betas", "0.9,0.95,0.99", "takes 2 values"),
    ("train.betas", "a,b", "must be a number"),
    ("train.blr", "fast", "must be a number"),
    ("train.epochs", "2.5", "must be an integer"),
    ("resume", "maybe", "must be true or false"),
])
def test_a_value_the_field_cannot_take_is_one_sentence(key, text, words):
    with pytest.raises(ConfigError, match=words):
        build_config(MAERunConfig, [f"--{key}", text])


def test_precision_no_and_fp32_pass_validation_and_mean_full_precision():
    from sslvit.train.precision import accelerate_name

    for text in ("no", "fp32"):
        cfg = build_config(MAERunConfig, ["--train.precision", text])
        cfg.train.validate()
        assert accelerate_name(cfg.train.precision) == "no"


def test_a_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  betas: [0.9, 0.95\nmodel:\n  size: small\n")
    with pytest.raises(ConfigError, match=r"c.yaml' is not valid YAML at line \d+"):
        build_config(MAERunConfig, ["--config", str(f)])


def test_a_key_set_twice_in_a_yaml_file_is_a_warning_naming_both_lines(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  blr: 1e-3\n  epochs: 5\n")
    cfg = build_config(MAERunConfig, ["--config", str(f)])
    assert cfg.train.epochs == 5
    err = capsys.readouterr().err
    assert f"config file '{f}' sets 'epochs' twice (lines 2 and 4); line 4 is used." in err


def test_a_key_given_alone_is_true_for_a_switch_and_asks_for_a_value_otherwise():
    assert build_config(MAERunConfig, ["--resume", "--train.epochs", "3"]).resume is True
    assert build_config(MAERunConfig, ["--train.hflip", "--train.epochs", "3"]).train.hflip is True  # Optional[bool]
    for argv, key in ((["--train.epochs"], "train.epochs"), (["--train.epochs", "--train.batch_size", "8"],
                                                              "train.epochs"), (["--data"], "data")):
        with pytest.raises(ConfigError, match=rf"^'{key}' needs a value: --{key} VALUE \(only a true/false key"):
            build_config(MAERunConfig, argv)
    with pytest.raises(ConfigError, match=r"^--config needs the path of a YAML file"):
        build_config(MAERunConfig, ["--train.epochs", "2", "--config"])
    assert build_config(MAERunConfig, ["--data", "true"]).data == "true"  # the text itself is still a value
