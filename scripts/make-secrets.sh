#!/usr/bin/env sh
# Write the compose stack's secrets as files into ./secrets (docker-compose.yml `secrets:`).
# Existing files are kept, so re-running never changes a password in use. The files must be readable by
# the containers' users (compose bind-mounts them as they are); the folder itself is the owner's only.
set -eu
cd "$(dirname "$0")/.."
mkdir -p secrets
chmod 0700 secrets
new() {  # new NAME VALUE: write secrets/NAME unless it exists
  if [ ! -e "secrets/$1" ]; then
    printf '%s\n' "$2" > "secrets/$1"
    chmod 0644 "secrets/$1"
    echo "wrote secrets/$1"
  fi
}
token() { python3 -c "import secrets; print(secrets.token_urlsafe(32))"; }
new redis_password "$(token)"
new postgres_password "$(token)"
new grafana_admin_password "$(token)"
new webhook_secret "$(python3 -c "import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())")"
