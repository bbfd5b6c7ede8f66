"""Settings: one frozen, validated object built at the edge (env, TOML, defaults) and passed down.

Precedence is built-in default < TOML file (``--config``) < environment variable ``WATCHER_*``.
Every validation problem becomes a :class:`ConfigError` whose message names the setting the way
the user wrote it (the environment variable, or the TOML key and file) and says what is valid.
"""

from __future__ import annotations

import difflib
import os
import socket
import tomllib
import zoneinfo
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "WATCHER_"
DEFAULT_STATE_DIR = Path("./data/state")
DEFAULT_EXCLUDE = (".*", "*.tmp", "*.part", "*.partial", "*.crdownload", "*.swp", "*~")

_environ: ContextVar[Mapping[str, str]] = ContextVar("watcher_environ")

Globs = Annotated[tuple[str, ...], NoDecode]
OnConflict = Literal["rename", "overwrite", "fail"]  # passed down as it is: a typo cannot mean rename


class ConfigError(Exception):
    """Invalid configuration: the CLI prints the message on one line and exits 2."""


class _MappingEnvSource(EnvSettingsSource):
    """The stock env source, reading a given mapping (``os.environ`` in production, a dict in tests)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _environ.get(os.environ)
        return {k.lower(): v for k, v in environ.items() if k.upper().startswith(ENV_PREFIX)}


class Settings(BaseSettings):
    """The effective configuration of one service instance (see the settings table in docs/configuration.md)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", case_sensitive=False)

    inbox: Path
    outbox: Path
    state_dir: Path = DEFAULT_STATE_DIR
    failed_dir: Path | None = None
    workers: int = Field(default=4, ge=1, le=256)
    queue_size: int = Field(default=10000, ge=1)
    rescan_interval: float = Field(default=30.0, ge=0)
    settle_seconds: float = Field(default=2.0, ge=0)
    observer: Literal["auto", "inotify", "polling"] = "auto"
    recursive: bool = True
    include: Globs = ("*",)
    exclude: Globs = DEFAULT_EXCLUDE
    on_conflict: OnConflict = "rename"
    max_attempts: int = Field(default=5, ge=1)
    fsync: bool = True
    shutdown_timeout: float = Field(default=30.0, ge=0)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    http_max_connections: int = Field(default=100, ge=1)
    http_request_timeout: float = Field(default=30.0, gt=0)
    api_token: SecretStr | None = None
    jobstore_url: str | None = None
    timezone: str = "UTC"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    checksum: Literal["none", "sha256"] = "none"
    record_retention_days: float = Field(default=30.0, ge=0)
    cluster: bool = False
    replica_id: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9._-]{1,63}$")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the TOML values (passed as init kwargs), then defaults."""
        return (_MappingEnvSource(settings_cls), init_settings)

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _split_globs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("include")
    @classmethod
    def _include_something(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # An empty list would start a service that reports ready and silently delivers nothing.
        if not value:
            raise ValueError("must name at least one glob; use * to deliver every file")
        return value

    @field_validator("log_level", "log_format", "observer", "on_conflict", "checksum", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("inbox", "outbox", "state_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty: set it to a directory path")
        return value

    @field_validator("failed_dir", "jobstore_url", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as UTC or Europe/Berlin") from exc
        return value

    @field_validator("inbox", "outbox", "state_dir", "failed_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Absolute, normalised paths make the nesting checks and relative paths unambiguous.
        return None if value is None else Path(os.path.abspath(value.expanduser()))

    @model_validator(mode="after")
    def _no_loops(self) -> Settings:
        inbox, outbox = self.inbox, self.outbox
        if outbox == inbox:
            raise ValueError("outbox: must differ from the inbox, or every file would be delivered forever")
        if outbox.is_relative_to(inbox) or inbox.is_relative_to(outbox):
            raise ValueError("outbox: must not be nested in the inbox, nor the inbox in it (files would loop)")
        if self.state_dir.is_relative_to(inbox):
            raise ValueError("state_dir: must not be inside the inbox (its files would be delivered)")
        if self.failed_dir is not None and self.failed_dir.is_relative_to(inbox):
            raise ValueError("failed_dir: must not be inside the inbox (quarantined files would loop)")
        # Several replicas are coordinated through PostgreSQL only (see docs/configuration.md).
        if self.cluster and not self.jobstore.startswith(("postgresql", "postgres")):
            raise ValueError(
                "cluster: WATCHER_CLUSTER=true needs WATCHER_JOBSTORE_URL to be a PostgreSQL URL "
                "(postgresql://user:password@host/db), which all replicas share"
            )
        if self.failed_path.is_relative_to(outbox):
            # Consumers of the outbox would take quarantined files (and their .error.json) as deliveries.
            field = "failed_dir" if self.failed_dir is not None else "state_dir"
            raise ValueError(
                f"{field}: the failed dir {self.failed_path} must not be inside the outbox "
                "(consumers would take quarantined files as deliveries); point it elsewhere"
            )
        return self

    @property
    def failed_path(self) -> Path:
        """The quarantine folder: WATCHER_FAILED_DIR or ``<state dir>/failed``."""
        return self.failed_dir if self.failed_dir is not None else self.state_dir / "failed"

    @property
    def record_url(self) -> str:
        """The SQLAlchemy URL of the delivery record: a SQLite file in the state dir, or in cluster
        mode the shared PostgreSQL database of WATCHER_JOBSTORE_URL (every replica sees every row).
        """
        if self.cluster:
            return self.jobstore
        return f"sqlite:///{self.state_dir / 'record.sqlite'}"

    @property
    def jobstore(self) -> str:
        """The SQLAlchemy URL of the schedule store."""
        return self.jobstore_url or f"sqlite:///{self.state_dir / 'jobs.sqlite'}"

    def public_view(self) -> dict[str, Any]:
        """The effective settings as plain values, the API token masked."""
        view: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "api_token":
                value = "********" if value is not None else None
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = ",".join(value)
            view[name] = value
        view["failed_dir"] = str(self.failed_path)
        view["jobstore_url"] = _mask_url_password(self.jobstore)
        return view


def _mask_url_password(url: str) -> str:
    """Hide a password in a database URL (``postgresql://user:secret@host/db``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror}); check the --config path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from exc
    known = set(Settings.model_fields)
    for key in data:
        if key not in known:
            raise ConfigError(
                f"config file {path}: unknown key {key!r}; valid keys are the lower-case setting names "
                f"without the prefix, e.g. inbox, outbox, workers"
            )
    return data


def _describe(field: str, environ: Mapping[str, str], toml: Mapping[str, Any], config_file: Path | None) -> str:
    """Name a setting as the user wrote it."""
    env_name = ENV_PREFIX + field.upper()
    if any(k.upper() == env_name for k in environ):
        return env_name
    if field in toml and config_file is not None:
        return f"key {field!r} in {config_file}"
    return env_name


def _format_error(
    exc: ValidationError, environ: Mapping[str, str], toml: Mapping[str, Any], config_file: Path | None
) -> str:
    err = exc.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]]
    msg = str(err["msg"]).removeprefix("Value error, ")
    field = loc[0] if loc else ""
    if not field and ":" in msg:  # model-level checks name their field first
        field, _, msg = msg.partition(": ")
    if field not in Settings.model_fields:
        return f"invalid configuration: {msg}"
    where = _describe(field, environ, toml, config_file)
    if err["type"] == "missing":
        return f"{where} is required: set it to a directory path"
    value = err.get("input")
    shown = "" if field == "api_token" or isinstance(value, dict) else f"={value!r}"
    return f"{where}{shown} is invalid: {msg}"


@contextmanager
def _using_environ(environ: Mapping[str, str]) -> Iterator[None]:
    token = _environ.set(environ)
    try:
        yield
    finally:
        _environ.reset(token)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``WATCHER_*`` variables that are no setting, each with the closest valid name (or None).

    A mistyped variable is otherwise silently ignored and its default used; the service warns
    about these once at start-up.
    """
    env = os.environ if environ is None else environ
    valid = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in valid)
    return [(k, next(iter(difflib.get_close_matches(k.upper(), valid, n=1, cutoff=0.6)), None)) for k in unknown]


def load_settings(config_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from defaults, the TOML file and the environment, or raise ConfigError."""
    env = os.environ if environ is None else environ
    toml = _read_toml(config_file) if config_file is not None else {}
    try:
        with _using_environ(env):
            return Settings(**toml)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, env, toml, config_file)) from None
