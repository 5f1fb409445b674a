"""The one settings object, read from environment variables.

Every field is read from the upper-case variable of the same name (``REDIS_URL``,
``MLFLOW_TRACKING_URI``, ``WEBHOOK_SECRET``, ...). The defaults run the embedded demo:
MLflow on a sqlite store under ``HOKUSAI_HOME`` (``./.hokusai``), Redis on localhost.
A value that cannot work fails here, at start-up, with the variable's name in the message.
This module imports only pydantic, the standard library and core, so producers can use it.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from hokusai_registry.store_uris import (
    TRACKING_DATABASE_DIALECTS,
    database_dialect,
    is_tracking_server,
    sqlite_file,
    with_password,
)
from hokusai_registry.webhook_settings import WebhookSettings

#: Schemes MLflow's artifact repositories read, accepted for ``artifact_uri`` by default.
DEFAULT_ARTIFACT_SCHEMES = (
    "file",
    "runs",
    "models",
    "mlflow-artifacts",
    "s3",
    "gs",
    "wasbs",
    "abfss",
    "hdfs",
    "dbfs",
)


class FileVariables(PydanticBaseSettingsSource):
    """``<NAME>_FILE``: any setting read from a file (compose/Docker secrets), the one rule for all of them.

    The file's text is the value (one trailing newline dropped). Setting both ``NAME`` and
    ``NAME_FILE`` is an error, as is a file that cannot be read; both messages name the variable.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        environ = {key.upper(): value for key, value in os.environ.items()}
        values: dict[str, Any] = {}
        for env_name, field_name in self.settings_cls.env_var_names().items():  # type: ignore[attr-defined]
            path = environ.get(f"{env_name}_FILE")
            if not path:
                continue
            if environ.get(env_name):
                raise ValueError(f"both {env_name} and {env_name}_FILE are set; set one of them")
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"{env_name}_FILE: cannot read {path}: {exc.strerror or exc}") from exc
            values[field_name] = text.removesuffix("\n").removesuffix("\r")
        return values


class Settings(WebhookSettings):
    """All configuration of producers, workers and the CLI. See ``docs/configuration.md``.

    Every variable may also be given as ``<NAME>_FILE``, the path of a file holding the value.
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- where things live -------------------------------------------------------------
    hokusai_home: Path = Field(
        default=Path(".hokusai"),
        description="Project-local folder for the embedded defaults (sqlite store, artifacts, staging).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Broker, result backend and the failed-jobs / dead-letter stores.",
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description="Password of a Redis with requirepass, added to REDIS_URL when that URL has none.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking (and registry) URI. Default: MLFLOW_SERVER_URL, else "
        "sqlite:///$HOKUSAI_HOME/mlflow.db.",
    )
    mlflow_server_url: str | None = Field(
        default=None,
        description="The pre-upgrade registry's name for the tracking server URL; used when "
        "MLFLOW_TRACKING_URI is unset.",
    )
    mlflow_experiment_name: str = Field(default="hokusai-registry", description="Experiment that holds the runs.")
    mlflow_experiment_id: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,32}$",
        description="An existing experiment to hold the runs instead (0: MLflow's Default, searched by default).",
    )
    mlflow_artifact_location: str | None = Field(
        default=None,
        description="Artifact location for a newly created experiment. Default: $HOKUSAI_HOME/artifacts "
        "for a local store, the server's default for a tracking server.",
    )
    served_artifacts_destination: str | None = Field(
        default=None,
        description="Workers: the tracking server's --artifacts-destination as this process can write it (a "
        "shared volume's absolute path, or the same bucket URI). mlflow-artifacts:/ files are then read and "
        "written there directly instead of through the server (checked once against the server; "
        "docs/scaling.md).",
    )

    tracking_database_uri: str | None = Field(
        default=None,
        description="Workers: the tracking server's own database (its --backend-store-uri: PostgreSQL, MySQL "
        "or SQL Server). Registrations then write runs, logged models and versions into it directly instead of "
        "through the server; MLFLOW_TRACKING_URI must be that server (it still creates the experiment and "
        "serves the artifacts). docs/scaling.md.",
    )
    tracking_database_password: SecretStr | None = Field(
        default=None,
        description="Password added to TRACKING_DATABASE_URI when that URI has none "
        "(TRACKING_DATABASE_PASSWORD_FILE: the tracking server's database password file).",
    )

    upload_tracking_uri: str | None = Field(
        default=None,
        description="Producers: http(s) URL of the stack's MLflow tracking server; save_and_enqueue then "
        "uploads models to its served artifacts instead of a staging folder.",
    )
    hokusai_outbox: bool = Field(default=True, description="Producers: spool jobs Redis cannot take (false: raise).")
    hokusai_outbox_dir: Path | None = Field(default=None, description="Producers: the outbox; $HOKUSAI_HOME/outbox.")
    hokusai_outbox_flush_s: float = Field(default=1.0, ge=0, description="Producers: outbox flush budget (0: none).")

    # --- job intake ----------------------------------------------------------------------
    allowed_artifact_schemes: Annotated[list[str], NoDecode] = Field(
        default=list(DEFAULT_ARTIFACT_SCHEMES),
        description="Comma-separated URI schemes accepted for artifact_uri ('file' covers bare paths).",
    )
    allowed_artifact_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated local folders that file:// and bare-path artifacts must lie under. "
        "Default: $HOKUSAI_HOME/staging.",
    )
    max_metadata_bytes: int = Field(default=1_000_000, gt=0, description="Cap on a job's JSON metadata.")

    # --- retries and timeouts ------------------------------------------------------------
    registry_max_retries: int = Field(default=8, ge=0, description="Celery retries of an unreachable MLflow.")
    registry_backoff_base_s: float = Field(default=2.0, gt=0, description="First retry wait when MLflow is down.")
    registry_backoff_max_s: float = Field(default=300.0, gt=0, description="Cap of one retry wait for MLflow.")
    task_time_limit_s: int = Field(default=600, gt=0, description="Hard limit of one task attempt.")
    visibility_timeout_s: int = Field(
        default=3600,
        gt=0,
        description="Redis redelivery timeout of an unacked message; must exceed the longest task plus "
        "the longest retry delay, or a waiting task is delivered twice.",
    )
    unacked_restore_interval_s: int = Field(
        default=10,
        gt=0,
        description="How often workers sweep Redis for messages a dead worker left unacked; such a "
        "message runs again VISIBILITY_TIMEOUT_S after delivery, plus up to this interval.",
    )
    result_expires_s: int = Field(default=7 * 24 * 3600, gt=0, description="How long task results are kept.")
    enqueue_retry_s: float = Field(default=10.0, ge=0, description="How long a producer retries a Redis blip.")
    staging_retention_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="How long a staged model folder is kept after its job was given up (for `jobs retry`), "
        "or after it was saved when Redis no longer knows its job; a registered job's folder goes at once.",
    )

    # --- metrics -------------------------------------------------------------------------
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the worker's Prometheus endpoint (/metrics); unset: no endpoint. See docs/operations.md.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the metrics endpoint listens on (0.0.0.0 inside a container)."
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        description="Folder for the prefork pool's metric files (prometheus_client multiprocess mode); "
        "default with METRICS_PORT: a fresh temporary folder per worker.",
    )

    # --- logging -------------------------------------------------------------------------
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["text", "json"] = Field(default="text", description="text, or json: one object per line.")

    @field_validator("allowed_artifact_schemes", mode="before")
    @classmethod
    def _split_schemes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_artifact_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value

    @field_validator("served_artifacts_destination")
    @classmethod
    def _check_served_destination(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme = urlsplit(value).scheme.lower()
        if scheme in {"mlflow-artifacts", "http", "https", "runs", "models"}:
            raise ValueError("SERVED_ARTIFACTS_DESTINATION must name the store itself (a path or a bucket URI), "
                             f"not a {scheme}: URI")  # fmt: skip
        if not scheme and not Path(value).is_absolute():
            raise ValueError("SERVED_ARTIFACTS_DESTINATION must be an absolute path or a store URI")
        return value

    @field_validator("tracking_database_uri")
    @classmethod
    def _check_tracking_database(cls, value: str | None) -> str | None:
        if not value:
            return None
        if database_dialect(value) not in TRACKING_DATABASE_DIALECTS:
            raise ValueError(
                "TRACKING_DATABASE_URI must be the tracking server's database, a SQLAlchemy URI of "
                f"{', '.join(TRACKING_DATABASE_DIALECTS)} (e.g. postgresql://mlflow@postgres:5432/mlflow)"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _check_timing(self) -> Settings:
        longest_wait = self.task_time_limit_s + max(self.registry_backoff_max_s, self.webhook_backoff_max_s)
        if self.visibility_timeout_s <= longest_wait:
            raise ValueError(
                f"VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed TASK_TIME_LIMIT_S + the "
                f"largest *_BACKOFF_MAX_S ({longest_wait:g}); otherwise Redis redelivers waiting tasks "
                "and they run twice"
            )
        return self

    @model_validator(mode="after")
    def _check_tracking_database_server(self) -> Settings:
        if self.tracking_database_uri and not is_tracking_server(self.tracking_uri):
            raise ValueError(
                "TRACKING_DATABASE_URI needs MLFLOW_TRACKING_URI to be the http(s) URL of the tracking server "
                "that uses this database (it creates the experiment and serves the artifacts)"
            )
        return self

    @model_validator(mode="after")
    def _add_redis_password(self) -> Settings:
        if self.redis_password and urlsplit(self.redis_url).scheme != "unix":
            self.redis_url = with_password(self.redis_url, self.redis_password.get_secret_value())
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, FileVariables(settings_cls), dotenv_settings, file_secret_settings

    @classmethod
    def env_var_names(cls) -> dict[str, str]:
        """Environment variable name → field name, for every setting this object reads."""
        prefix = (cls.model_config.get("env_prefix") or "").upper()
        names = {}
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias if isinstance(field.validation_alias, str) else None
            names[(alias or f"{prefix}{field_name}").upper()] = field_name
        return names

    # --- derived values ------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force: MLFLOW_TRACKING_URI, MLFLOW_SERVER_URL, else the embedded store."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if self.mlflow_server_url:
            return self.mlflow_server_url
        return f"sqlite:///{(self.hokusai_home / 'mlflow.db').resolve()}"

    @property
    def tracking_uri_source(self) -> str:
        """Where :attr:`tracking_uri` came from: a variable's name, or ``embedded default``."""
        if self.mlflow_tracking_uri:
            return "MLFLOW_TRACKING_URI"
        if self.mlflow_server_url:
            return "MLFLOW_SERVER_URL"
        return "embedded default"

    @property
    def tracking_database_url(self) -> str | None:
        """TRACKING_DATABASE_URI with TRACKING_DATABASE_PASSWORD added, or None (workers go through the server)."""
        if not self.tracking_database_uri:
            return None
        password = self.tracking_database_password.get_secret_value() if self.tracking_database_password else ""
        return with_password(self.tracking_database_uri, password)

    def artifact_location_for(self, tracking_uri: str | None = None) -> str | None:
        """The one rule for a new experiment's artifacts on ``tracking_uri`` (default :attr:`tracking_uri`).

        MLFLOW_ARTIFACT_LOCATION, else beside a sqlite file, else None for a tracking server (it chooses: a
        local folder would strand artifacts on this host), else ``$HOKUSAI_HOME/artifacts``.
        """
        uri = self.tracking_uri if tracking_uri is None else tracking_uri
        if self.mlflow_artifact_location:
            return self.mlflow_artifact_location
        path = sqlite_file(uri)
        if path is not None:
            return (path.resolve().parent / "artifacts").as_uri()
        if is_tracking_server(uri):
            return None
        return (self.hokusai_home / "artifacts").resolve().as_uri()

    @property
    def staging_dir(self) -> Path:
        """Where producers on this host save models before enqueueing them."""
        return (self.hokusai_home / "staging").resolve()

    @property
    def outbox_dir(self) -> Path:
        """Where producers spool the jobs Redis could not take (``producers.outbox``)."""
        return (self.hokusai_outbox_dir or self.hokusai_home / "outbox").expanduser().resolve()

    @property
    def artifact_roots(self) -> list[Path]:
        """Local folders that file:// artifacts must lie under (resolved)."""
        roots = self.allowed_artifact_roots or [self.staging_dir]
        return [root.expanduser().resolve() for root in roots]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment.

    Raises:
        pydantic.ValidationError: a variable is invalid; show it with :func:`describe_invalid`.
    """
    return Settings()


def describe_invalid(exc: ValidationError) -> str:
    """One line naming each invalid variable and what is wrong: never the value (it may be a secret)."""
    problems = "; ".join(
        f"{'.'.join(map(str, err['loc'])).upper() or 'settings'}: {str(err['msg']).removeprefix('Value error, ')}"
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    )
    return f"invalid settings: {problems} (fix the environment variable; see docs/configuration.md)"


def settings_or_exit(program: str) -> Settings:
    """:func:`get_settings` for a process start-up: an invalid setting prints one line and exits 2.

    For ``celery -A worker worker`` / ``flower``, which would otherwise print a traceback with
    pydantic's ``input_value`` (half of a secret).
    """
    try:
        return get_settings()
    except ValidationError as exc:
        print(f"{program} cannot start: {describe_invalid(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
