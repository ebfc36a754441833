"""`integrator.yaml`: the sites to watch and where their secrets are. Secrets are never in the file, only the names
of the environment variables that hold them (contrib/integrator.yaml is the commented example)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.config import ConfigError

__all__ = ["HttpSection", "IntegratorConfig", "Loaded", "SiteEntry", "load_config"]

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
SITE_ID = r"^[A-Za-z0-9_-]{1,64}$"  # as bridge mode's --site-id


class _Strict(BaseModel):
    # extra="forbid": a `token:` written into the file by mistake is refused, not silently carried
    model_config = ConfigDict(extra="forbid")


class HttpSection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)


class SiteEntry(_Strict):
    site_id: str = Field(pattern=SITE_ID)
    url: str  # the site instance's REST base, or a proxy's `https://gw.example/sites/A`
    token_env: str = Field(pattern=ENV_NAME)  # the environment variable holding the site's admin token

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or "@" in v.split("/")[2]:
            raise ValueError("must be http:// or https:// with no credentials in it")
        return v.rstrip("/")


class IntegratorConfig(_Strict):
    http: HttpSection = HttpSection()
    # the environment variable with the integrator's own token: the raw token, or its `$7$` PBKDF2 hash
    token_env: str = Field("INTERCOM_INTEGRATOR_TOKEN", pattern=ENV_NAME)
    pbkdf2_iterations: int = Field(10_000, ge=1_000, le=1_000_000)  # when the variable holds the raw token
    timeout_s: float = Field(3.0, gt=0, le=60)  # per site, per poll: a slower site is shown unreachable
    max_parallel: int = Field(32, ge=1, le=1000)  # sites probed at once (sockets and file descriptors)
    sites: list[SiteEntry] = Field(min_length=1, max_length=1000)

    @field_validator("sites")
    @classmethod
    def _unique(cls, v: list[SiteEntry]) -> list[SiteEntry]:
        seen: set[str] = set()
        for site in v:
            if site.site_id in seen:
                raise ValueError(f"site_id {site.site_id!r} is listed twice")
            seen.add(site.site_id)
        return v


@dataclass(frozen=True)
class Loaded:
    config: IntegratorConfig
    token: str  # the integrator token, or its `$7$` hash, as the environment gave it
    site_tokens: dict[str, str]  # site_id -> that site's admin token


def _error_text(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Loaded:
    """Read and validate the file, then take every secret it names from the environment; ConfigError says what."""
    environ = os.environ if env is None else env
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with `sites:`")
    try:
        config = IntegratorConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_error_text(exc)}") from exc
    token = environ.get(config.token_env, "").strip()
    if not token:
        raise ConfigError(f"the integrator's token: set ${config.token_env} (the file names the variable only)")
    tokens: dict[str, str] = {}
    for site in config.sites:
        value = environ.get(site.token_env, "").strip()
        if not value:
            raise ConfigError(f"site {site.site_id!r}: set ${site.token_env} to the site's admin token")
        tokens[site.site_id] = value
    return Loaded(config, token, tokens)
