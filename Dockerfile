# One image for the worker, Flower, the sample webhook receiver and the MLflow tracking server.
# Build: docker compose build   (or: docker build -t hokusai-registry:0.1.0 .)
# No secrets are baked in: every setting comes from the environment at run time (see .env.example).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 hokusai \
 && useradd --system --uid 10001 --gid hokusai --home-dir /home/hokusai --create-home hokusai

WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY hokusai_registry ./hokusai_registry
COPY worker ./worker
COPY producers ./producers
COPY hokusai_app ./hokusai_app
# Development tooling: only for the compose file's sample receiver (python -m devtools.receiver);
# it is not part of the installed package.
COPY devtools ./devtools
# The server extra adds Flower and the PostgreSQL driver the tracking server needs.
RUN pip install ".[server]"

# HOKUSAI_HOME (staging folder for file artifacts) and the tracking server's artifact store,
# owned by the runtime user so that named volumes mounted there are writable.
RUN mkdir -p /data/staging /mlartifacts \
 && chown -R hokusai:hokusai /data /mlartifacts
ENV HOKUSAI_HOME=/data

USER hokusai
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
