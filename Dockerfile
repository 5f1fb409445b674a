# One image for the worker, Flower, the sample webhook receiver and the MLflow tracking server.
# Build: docker compose build   (or: docker build -t hokusai-registry:0.1.0 .)
# BASE_IMAGE: any Debian-like image with Python 3.11 and its venv module; the default is the public one.
# scripts/stack.sh builds a local Debian base (mmdebstrap) where no registry can be reached and passes it here.
# No secrets are baked in: every setting comes from the environment at run time (see .env.example).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/hokusai \
    PATH=/opt/hokusai/bin:$PATH

RUN groupadd --system --gid 10001 hokusai \
 && useradd --system --uid 10001 --gid hokusai --home-dir /home/hokusai --create-home hokusai

# A virtual environment: Debian's own python refuses pip installs outside one (PEP 668).
RUN python -m venv /opt/hokusai

# Dependencies first, from the lock (the versions the test suite runs on: scripts/image_lock.py), so
# that a code change reuses this layer instead of reinstalling MLflow.
COPY image-requirements.lock /opt/hokusai/image-requirements.lock
RUN pip install -r /opt/hokusai/image-requirements.lock

WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY hokusai_registry ./hokusai_registry
COPY worker ./worker
COPY producers ./producers
COPY hokusai_app ./hokusai_app
# Development tooling: only for the compose file's sample receiver (python -m devtools.receiver);
# it is not part of the installed package.
COPY devtools ./devtools
# The project itself, on the locked dependencies (the server extra: Flower and the PostgreSQL driver
# the tracking server needs); `pip check` fails the build when the lock misses a requirement.
RUN pip install --no-deps --no-build-isolation ".[server]" \
 && pip check

# HOKUSAI_HOME (staging folder for file artifacts) and the tracking server's artifact store,
# owned by the runtime user so that named volumes mounted there are writable.
RUN mkdir -p /data/staging /mlartifacts \
 && chown -R hokusai:hokusai /data /mlartifacts
ENV HOKUSAI_HOME=/data

USER hokusai
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
