#!/usr/bin/env sh
# Write the compose stack's secrets as files into ./secrets (docker-compose.yml `secrets:`): the Redis,
# PostgreSQL and Grafana passwords, Flower's login (user:password) and the webhook secret.
# Existing files are kept, so re-running never changes a password in use.
#
# docker compose bind-mounts these files into /run/secrets as they are on the host (it ignores the
# uid, gid and mode of file secrets), so each file is made readable by its reader only: mode 0400,
# owned by the uid of the service that reads it. The project image's services (worker, Flower,
# receiver, tracking server) run as uid 10001 (the Dockerfile's `hokusai` user); Grafana runs as uid
# 472; Redis and PostgreSQL read their password as root before they start. Handing a file to another
# uid needs root: run this as root (or with sudo). The folder itself is the owner's only.
set -eu
cd "$(dirname "$0")/.."
HOKUSAI_UID=10001  # the Dockerfile's hokusai user
GRAFANA_UID=472    # the grafana/grafana image's user
if [ "$(id -u)" != 0 ]; then
  echo "scripts/make-secrets.sh: run it as root (sudo scripts/make-secrets.sh): each secret file is handed" >&2
  echo "to the uid of the container service that reads it, readable by that uid only" >&2
  exit 1
fi
umask 077
mkdir -p secrets
chmod 0700 secrets
new() {  # new NAME OWNER_UID VALUE: write secrets/NAME unless it exists; owner-only, 0400
  if [ ! -e "secrets/$1" ]; then
    printf '%s\n' "$3" > "secrets/$1"
    echo "wrote secrets/$1"
  fi
  chown "$2:$2" "secrets/$1"
  chmod 0400 "secrets/$1"
}
token() { python3 -c "import secrets; print(secrets.token_urlsafe(32))"; }
new redis_password "$HOKUSAI_UID" "$(token)"
new postgres_password "$HOKUSAI_UID" "$(token)"
new grafana_admin_password "$GRAFANA_UID" "$(token)"
new flower_basic_auth "$HOKUSAI_UID" "admin:$(token)"  # Flower's login, user:password
new webhook_secret "$HOKUSAI_UID" "$(python3 -c "import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())")"
