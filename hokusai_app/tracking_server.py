"""Start ``mlflow server`` on PostgreSQL without the database password on any command line.

    python -m hokusai_app.tracking_server [mlflow server options, except --backend-store-uri]

The backend store URI is built from ``POSTGRES_USER`` (default ``mlflow``), the password
(``POSTGRES_PASSWORD_FILE``, a compose secret, or ``POSTGRES_PASSWORD``), ``POSTGRES_HOST``
(default ``postgres``), ``POSTGRES_PORT`` (default ``5432``) and ``POSTGRES_DB`` (default ``mlflow``),
and handed to ``mlflow server`` as ``MLFLOW_BACKEND_STORE_URI``, an environment variable it reads.
Every other option is passed through to ``mlflow server``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from hokusai_registry.errors import ConfigurationError
from hokusai_registry.store_uris import with_password


def postgres_password(environ: Mapping[str, str]) -> str:
    """The password from ``POSTGRES_PASSWORD_FILE`` or ``POSTGRES_PASSWORD`` (not both)."""
    path, value = environ.get("POSTGRES_PASSWORD_FILE"), environ.get("POSTGRES_PASSWORD")
    if path and value:
        raise ConfigurationError("both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set; set one of them")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").removesuffix("\n")
        except OSError as exc:
            raise ConfigurationError(f"POSTGRES_PASSWORD_FILE: cannot read {path}: {exc.strerror or exc}") from exc
    return value or ""


def backend_store_uri(environ: Mapping[str, str]) -> str:
    """``postgresql+psycopg2://user:password@host:port/db`` from the ``POSTGRES_*`` variables (quoted)."""
    user = quote(environ.get("POSTGRES_USER") or "mlflow", safe="")
    host = environ.get("POSTGRES_HOST") or "postgres"
    port = environ.get("POSTGRES_PORT") or "5432"
    database = quote(environ.get("POSTGRES_DB") or "mlflow", safe="")
    return with_password(f"postgresql+psycopg2://{user}@{host}:{port}/{database}", postgres_password(environ))


def server_help() -> str:
    """``mlflow server --help``: the options this command passes through."""
    from mlflow.cli import cli

    command = cli.commands["server"]
    with command.make_context("mlflow server", [], resilient_parsing=True) as context:
        return command.get_help(context)


def main(argv: Sequence[str] | None = None) -> None:
    """Build ``MLFLOW_BACKEND_STORE_URI``, then replace this process with ``mlflow server``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(__doc__)
        print(server_help())
        return
    if any(arg.split("=", 1)[0] == "--backend-store-uri" for arg in args):
        raise SystemExit("--backend-store-uri would put the password on the command line; set POSTGRES_* instead")
    try:
        uri = backend_store_uri(os.environ)
    except ConfigurationError as exc:
        raise SystemExit(str(exc)) from exc
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    env.pop("POSTGRES_PASSWORD", None)
    os.execvpe(sys.executable, [sys.executable, "-m", "mlflow", "server", *args], env)


if __name__ == "__main__":
    main()
