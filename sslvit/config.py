"""Entry-point configs: nested dataclasses, loaded from YAML and overridden per key on the
command line (``--train.epochs 10``, ``--train.epochs=10`` or ``train.epochs=10``).
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from pathlib import Path
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A config value or key a user gave is wrong; the message names it and the fix."""


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _fields(cls) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


_NONE_TEXT = ("null", "none", "~", "")
_TRUE_TEXT, _FALSE_TEXT = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class BareFlag(str):
    """The text ``true`` of a key given alone on the command line (``--resume``)."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the field's type ``tp`` means it. Values from YAML and the command line arrive
    as text (``load_text_yaml``), so YAML 1.1's readings never apply: a ``str`` field keeps ``no``,
    ``on`` or ``null`` as written, a ``float`` takes ``1e-3``, a tuple takes ``0.5,1`` or ``[0.5, 1]``;
    ``null``/``none``/``~``/empty mean None only for an ``Optional`` field."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    text = value.strip() if isinstance(value, str) else None
    if origin is typing.Union:  # Optional[X]
        if value is None or (text is not None and text.lower() in _NONE_TEXT):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if isinstance(value, BareFlag) and tp is not bool:
        raise ConfigError(f"'{key}' needs a value: --{key} VALUE (only a true/false key can be given alone).")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE_TEXT + _FALSE_TEXT:
            return text.lower() in _TRUE_TEXT
        raise ConfigError(f"'{key}' must be true or false (got {value!r}).")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        number = _number(text)
        if number is None:
            raise ConfigError(f"'{key}' must be a number such as 0.5 or 1e-3 (got {value!r}).")
        return number
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = value if isinstance(value, float) else _number(text)
        if number is not None and float(number).is_integer():
            return int(number)
        raise ConfigError(f"'{key}' must be an integer (got {value!r}).")
    if tp is str:
        if isinstance(value, (dict, list, tuple, bool)) or value is None:
            raise ConfigError(f"'{key}' must be text (got {value!r}); quote it or write it plainly.")
        return str(value)
    if origin in (tuple, list):
        return _coerce_sequence(value, text, tp, key)
    return value


def _number(text: Optional[str]) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _coerce_sequence(value: Any, text: Optional[str], tp: Any, key: str) -> tuple | list:
    """A list from YAML, ``[0.5, 1]`` or ``0.5,1`` -> tuple/list of the element types; a fixed
    tuple (``tuple[float, float]``) must get exactly its length."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if text is not None:
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        value = [v.strip() for v in inner.split(",")] if inner.strip() else []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"'{key}' must be a list like 0.9,0.95 or [0.9, 0.95] (got {value!r}).")
    variadic = not args or (len(args) == 2 and args[1] is Ellipsis)
    if not variadic and len(value) != len(args):
        raise ConfigError(f"'{key}' takes {len(args)} values, like "
                          f"{','.join(['0.5'] * len(args))} (got {len(value)}: {value!r}).")
    types = list(args) if not variadic else [args[0] if args else Any] * len(value)
    out = [v if t is Any else _coerce(v, t, key) for v, t in zip(value, types)]
    return tuple(out) if origin is tuple else out


def _apply(cfg, updates: dict, prefix: str = "") -> None:
    fields = _fields(type(cfg))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            known = ", ".join(prefix + k for k in fields)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Known keys: {known}."
            raise ConfigError(f"Unknown config key '{key}'.{hint}")
        tp, _ = fields[name]
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{key}' is a section; set its keys, e.g. {key}.<name>=<value>.")
            _apply(current, value, prefix=f"{key}.")
        else:
            setattr(cfg, name, _coerce(value, tp, key))


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _merge(a: dict, b: dict, prefix: str = "") -> dict:
    """``b``'s keys over ``a``'s. A key that ``a`` gives a value and ``b`` gives keys under (a YAML
    ``train: [1, 2]`` and ``--train.epochs 3``) is refused: one of the two is wrong, and keeping
    either would drop the other without a word."""
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v, prefix=f"{prefix}{k}.")
        elif isinstance(v, dict) and k in a:
            raise ConfigError(f"'{prefix}{k}' is given both as the value {a[k]!r} and by keys under it "
                              f"('{prefix}{k}.{next(iter(v))}'); give it one way.")
        else:
            a[k] = v
    return a


def parse_overrides(argv: list[str]) -> tuple[Optional[str], dict]:
    """argv -> (path of --config or None, nested dict of overrides). Values stay text, typed later
    by their dataclass fields (so ``--train.precision no`` is the text ``no``, not YAML's False)."""
    config_path = None
    overrides: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            arg = arg[2:]
            if "=" in arg:
                key, raw = arg.split("=", 1)
            else:
                key = arg
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    raw = argv[i + 1]
                    i += 1
                else:
                    raw = BareFlag("true")  # --resume; a key that is not true/false says it needs a value
        elif "=" in arg:
            key, raw = arg.split("=", 1)
        else:
            raise ConfigError(f"Cannot read the argument '{arg}'; write key=value or --key value.")
        key = key.replace("-", "_")
        if key == "config":
            if isinstance(raw, BareFlag):
                raise ConfigError("--config needs the path of a YAML file: --config FILE.yaml.")
            config_path = raw
        else:
            _merge(overrides, _nest(key, raw))  # text: typed by its field in _coerce
        i += 1
    return config_path, overrides


class _TextLoader(yaml.BaseLoader):
    """``yaml.BaseLoader`` (every scalar kept as text) that also notes keys set twice in one mapping."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []  # (key, first line, later line)

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str):
                if key in lines:
                    self.duplicates.append((key, lines[key], key_node.start_mark.line + 1))
                lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_text_yaml(text: str, source: str = "the YAML") -> Any:
    """YAML with every scalar kept as its text: ``no``, ``on``, ``1e-3`` and ``null`` are read as
    written, and each config field types its own value (``_coerce``). A key set twice in one
    mapping is a warning on stderr naming both lines (the later one wins, as in YAML)."""
    loader = _TextLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    for key, first, later in loader.duplicates:
        print(f"warning: {source} sets '{key}' twice (lines {first} and {later}); line {later} is used.",
              file=sys.stderr)
    return data


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file '{p}' does not exist; pass --config with the path of a YAML file.")
    try:
        data = load_text_yaml(p.read_text(), source=f"config file '{p}'") or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"Config file '{p}' is not valid YAML{where} ({getattr(e, 'problem', None) or e}); "
                          "fix its syntax.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{p}' must hold a mapping of keys to values.")
    return data


def build_config(cls, argv: Optional[list[str]] = None, presets=None, base: Optional[dict] = None):
    """Defaults of ``cls`` <- preset (if the data source has one) <- --config YAML <- command line.
    ``presets``: {data: preset}, or a function data -> preset or None. With ``base`` (a resumed
    run's own config.yaml), that replaces the defaults and the preset."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(help_text(cls, Path(sys.argv[0]).name))
        raise SystemExit(0)
    config_path, overrides = parse_overrides(argv)
    layers = load_yaml(config_path) if config_path else {}
    _merge(layers, overrides)
    cfg = cls()
    data = layers.get("data", getattr(cfg, "data", None))
    if base is not None:
        _apply(cfg, base)
    elif callable(presets) and isinstance(data, str):
        _apply(cfg, presets(data) or {})
    elif presets and isinstance(data, str) and data in presets:
        _apply(cfg, presets[data])
    _apply(cfg, layers)
    return cfg


def help_text(cls, prog: str) -> str:
    lines = [f"usage: {prog} [--config FILE.yaml] [--key value | key=value ...]", "", "keys (default):"]

    def walk(obj, prefix=""):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            else:
                lines.append(f"  --{prefix}{f.name} {v!r}")

    walk(cls())
    return "\n".join(lines)


def plain_dict(cfg) -> dict:
    """The config as YAML-safe nested dicts and lists (tuples become lists), as ``config.yaml`` holds it."""
    return _plain(to_dict(cfg))


def save_yaml(cfg, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(plain_dict(cfg), sort_keys=False))
    tmp.replace(path)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
