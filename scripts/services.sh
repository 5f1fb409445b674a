#!/usr/bin/env bash
# Make sure the services the tests use are up: Redis on 127.0.0.1:6379 and PostgreSQL on
# 127.0.0.1:5432. Machines of this kind start both at boot; this starts whichever is down.
set -euo pipefail

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! redis_up; then
  echo "==> starting redis-server"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "==> starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
for _ in $(seq 1 50); do redis_up && break; sleep 0.2; done
redis_up || { echo "Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }
for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
pg_up || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
