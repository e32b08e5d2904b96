"""The embedded policy store: policies from a TOML file.

The file holds ``[[policies]]`` tables in the shape of PRODUCT §3. Without a
file, the built-in demo policies (``default_policies.toml``) are served.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from helios.core.policy import Policy, PolicySet, parse_policy
from helios.errors import ConfigError, HeliosError

DEFAULT_SOURCE = "built-in demo policies"


def load_policies(path: str | None, *, revision: int = 1) -> tuple[PolicySet, str]:
    """Load the policy file at ``path`` (or the defaults); returns the set and its source."""
    if not path:
        text = resources.files("helios.store").joinpath("default_policies.toml").read_text()
        return parse_policies(text, DEFAULT_SOURCE, revision=revision), DEFAULT_SOURCE
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read policy file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"policy file {path} is not UTF-8 text") from None
    return parse_policies(text, path, revision=revision), path


def file_version(path: str) -> tuple[int, int] | None:
    """What identifies the file's current content cheaply: (mtime in ns, size)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def parse_policies(text: str, source: str, *, revision: int = 1) -> PolicySet:
    """Parse a policy document; errors name the source and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{source} nests arrays or tables too deeply") from None
    unknown = sorted(set(data) - {"policies"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {unknown[0]!r} (expected [[policies]])")
    raw = data.get("policies", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: policies must be an array of tables ([[policies]])")
    policies: list[Policy] = []
    try:
        for index, entry in enumerate(raw):
            if not isinstance(entry, dict):
                raise ConfigError(f"policies[{index}] must be a table")
            policies.append(parse_policy(entry, where=f"policies[{index}]"))
        policy_set = PolicySet(policies, revision=revision)
    except HeliosError as error:
        raise ConfigError(f"{source}: {error.message}") from None
    if not len(policy_set):
        raise ConfigError(f"{source} defines no policies")
    return policy_set
