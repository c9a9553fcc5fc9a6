"""Run configuration: Hydra YAML supplies values, one dataclass per concern validates them.

``load_config(overrides)`` composes ``configs/config.yaml`` with Hydra's compose
API; ``build(cls, node, "group")`` turns one group into its dataclass (nested
dataclasses and tuples included, every field's type checked by pydantic) and names
the full key in a one-line error for an unknown key, a wrong type or a bad value
(docs/config.md).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path

# The Hydra tree at the repo root (an editable install); VINCIE_CONFIG_DIR points elsewhere
# (a non-editable install carries no configs/: point it at a checkout's configs/).
CONFIG_DIR = Path(os.environ.get("VINCIE_CONFIG_DIR") or Path(__file__).resolve().parent.parent / "configs")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""


def _plain(node):
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return node


def _hints(cls) -> dict:
    """Field name -> resolved annotation (``from __future__ import annotations`` leaves strings)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


_HINTS: dict = {}


@functools.lru_cache(maxsize=None)
def _adapter(tp):
    import pydantic

    return pydantic.TypeAdapter(tp)


def _shape(tp, v, key: str):
    """YAML shapes -> the annotation's: a mapping for a dataclass field is built (recursively, errors
    naming ``key``), a list for a tuple becomes a tuple (element by element). Types are checked later."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            return v
        # the one alternative that takes this shape: a dataclass for a mapping, a tuple for a list
        for a in args:
            if (dataclasses.is_dataclass(a) and isinstance(v, Mapping)) or \
                    (isinstance(v, list) and (a is tuple or typing.get_origin(a) is tuple)):
                return _shape(a, v, key)
        return v
    if dataclasses.is_dataclass(tp) and isinstance(tp, type) and isinstance(v, Mapping):
        return build(tp, v, key)
    if (tp is tuple or origin is tuple) and isinstance(v, (list, tuple)):
        if args and args[-1] is Ellipsis:
            return tuple(_shape(args[0], x, f"{key}.{i}") for i, x in enumerate(v))
        if args and len(args) == len(v):
            return tuple(_shape(a, x, f"{key}.{i}") for i, (a, x) in enumerate(zip(args, v)))
        return tuple(v)
    return v


def _rename(msg: str, cls, group: str) -> str:
    """A ``__post_init__`` message names ``ClassName.key``; under ``build`` it is ``group.key``."""
    prefix = cls.__name__ + "."
    if msg.startswith(prefix):
        return f"{group}.{msg[len(prefix):]}"
    named = msg.split(" ", 1)[0].endswith(":")          # the dataclass already named its key
    return msg if named else f"{group}: {msg}"


def build(cls, node, group: str):
    """Instantiate dataclass ``cls`` from a mapping (a Hydra node or a dict); errors name ``group.key``.

    Every given field is checked against its annotation by pydantic in strict mode (no ``true`` for an
    int, no ``'3'`` for a number; an int for a float is fine), after YAML lists become tuples and nested
    mappings become their dataclass (built the same way, errors naming ``group.field.key``). The value
    checks pydantic cannot express stay in the dataclass's ``__post_init__``, which runs as usual.
    """
    import pydantic

    d = _plain(node)
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{group}: expected a mapping, got {type(d).__name__}")
    d = {k: _plain(v) for k, v in d.items()}     # e.g. dict(cfg.model): its values are still ListConfig nodes
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for k in d:
        if k not in names:
            raise ConfigError(f"{group}.{k}: unknown key (known: {', '.join(sorted(names))})")
    hints = _hints(cls)
    annotation = {f.name: f.type for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in d.items():
        key, tp = f"{group}.{k}", hints[k]
        v = _shape(tp, v, key)
        try:
            kw[k] = _adapter(tp).validate_python(v, strict=True)
        except pydantic.ValidationError:
            want = annotation[k] if isinstance(annotation[k], str) else getattr(tp, "__name__", str(tp))
            raise ConfigError(f"{key}: expected {want}, got {v!r}") from None
    try:
        return cls(**kw)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(_rename(str(e).splitlines()[0], cls, group)) from None


def load_config(overrides: list[str] | None = None, config_name: str = "config"):
    """Compose the Hydra config (``configs/<config_name>.yaml``) with command-line style overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"config: {str(e).splitlines()[0]}") from None


def resolve_path(p: str | None, base: str | os.PathLike = ".") -> str | None:
    if p is None:
        return None
    return str(Path(p) if os.path.isabs(p) else Path(base) / p)
