"""Run configuration: Hydra YAML supplies values, one dataclass per concern validates them.

``load_config(overrides)`` composes ``configs/config.yaml`` with Hydra's compose
API; ``build(cls, node, "group")`` turns one group into its dataclass and names
the key in a one-line error for an unknown key or a bad value.
"""
from __future__ import annotations

import dataclasses
import os
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


def build(cls, node, group: str):
    """Instantiate dataclass ``cls`` from a mapping; errors name ``group.key``."""
    d = _plain(node) or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{group}: expected a mapping, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            raise ConfigError(f"{group}.{k}: unknown key (known: {', '.join(sorted(names))})")
    kw = {}
    for k, v in d.items():
        default = names[k].default
        if isinstance(v, list) and isinstance(default, tuple):
            v = tuple(v)
        kw[k] = v
    try:
        return cls(**kw)
    except (ValueError, TypeError) as e:
        msg = str(e).splitlines()[0]
        named = msg.split(" ", 1)[0].endswith(":")          # the dataclass already named its key
        raise ConfigError(msg if named else f"{group}: {msg}") from None


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
