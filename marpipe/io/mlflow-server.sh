#!/usr/bin/env bash
# MLflow tracking server for CI, the tests and SLURM jobs on this machine.
#
#   workflow/scripts/mlflow-server.sh up      start (idempotent); prints the tracking URI
#   workflow/scripts/mlflow-server.sh down    stop the server's whole process group
#   workflow/scripts/mlflow-server.sh status  print the URI if the server answers /health
#
# State under $MARPIPE_STATE/mlflow (default .marpipe/mlflow, the pipeline's state in the working directory):
#   mlflow.db   sqlite backend store (only the server writes it: many SLURM
#               jobs writing one sqlite file directly hit "database is locked")
#   artifacts/  artifact store, served by the server (--serve-artifacts), so
#               jobs upload over HTTP and need no shared path
#   uri         the tracking URI (export MLFLOW_TRACKING_URI=$(cat .../uri)); removed by `down`
#   port        the port last used; kept by `down`, so a restarted server comes back at the
#               same URI (jobs, MLFLOW_TRACKING_URI and `marpipe mlflow-sync` keep working)
#   server.pid  pid = process-group id (started with setsid)
#   server.log  server output
# Port: $MARPIPE_MLFLOW_PORT (an error if taken), else the recorded port (.../port) if free,
# else 5000 if free, else a free one (logged: clients holding an older URI must be pointed at it).
# Host: $MARPIPE_MLFLOW_HOST (default 127.0.0.1); the pipeline binds the submitting host's name, which
# the compute nodes reach. Authentication: $MARPIPE_MLFLOW_AUTH = on | off | auto (default: on unless
# the host is a loopback address): MLflow's basic-auth app, one admin user `marpipe` whose password is
# generated once into auth/password (mode 600; clients: MLFLOW_TRACKING_USERNAME/PASSWORD).
# mlflow binary: $MLFLOW_BIN, else <repo>/.venv/bin/mlflow, else PATH.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${MARPIPE_STATE:-.marpipe}"
DIR="$STATE/mlflow"
PIDF="$DIR/server.pid"
URIF="$DIR/uri"
PORTF="$DIR/port"
HOST="${MARPIPE_MLFLOW_HOST:-127.0.0.1}"
AUTHD="$DIR/auth"

log() { echo "[mlflow] $*" >&2; }
die() { echo "[mlflow] ERROR: $*" >&2; exit 1; }

find_mlflow() {
  if [ -n "${MLFLOW_BIN:-}" ]; then echo "$MLFLOW_BIN"
  elif [ -x "$REPO/.venv/bin/mlflow" ]; then echo "$REPO/.venv/bin/mlflow"
  elif command -v mlflow >/dev/null; then command -v mlflow
  else die "mlflow not found: run 'make install' (creates .venv) or set MLFLOW_BIN"; fi
}

healthy() { # uri -> 0 if /health answers OK
  local py
  py="$(dirname "$(find_mlflow)")/python"; [ -x "$py" ] || py=python3
  "$py" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/health", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

running() { [ -s "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; }

port_free() { # SO_REUSEADDR as the server sets it: a port left in TIME_WAIT by the last server is free
  python3 - "$1" "$HOST" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[2], int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

free_port() {
  python3 -c 'import socket, sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$HOST"
}

auth_on() { # 0 if the server runs MLflow's basic-auth app
  case "${MARPIPE_MLFLOW_AUTH:-auto}" in
    on) return 0 ;;
    off) return 1 ;;
  esac
  ! python3 - "$HOST" <<'PY'
import ipaddress, socket, sys
sys.exit(0 if ipaddress.ip_address(socket.gethostbyname(sys.argv[1])).is_loopback else 1)
PY
}

auth_config() { # writes auth/basic_auth.ini (and the password, once); prints its path
  mkdir -p "$AUTHD"; chmod 700 "$AUTHD"
  local f
  for f in password secret_key; do      # the admin password; the key of the auth app's CSRF tokens
    [ -s "$AUTHD/$f" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$AUTHD/$f")
  done
  (umask 077; cat > "$AUTHD/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$AUTHD/basic_auth.db
admin_username = marpipe
admin_password = $(cat "$AUTHD/password")
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
INI
  )
  echo "$AUTHD/basic_auth.ini"
}

cmd_up() {
  local t0=$SECONDS
  if running && [ -s "$URIF" ] && healthy "$(cat "$URIF")"; then
    log "already running at $(cat "$URIF") (pgid $(cat "$PIDF"))"
    cat "$URIF"; return 0
  fi
  running && cmd_down
  local mlflow port uri
  mlflow="$(find_mlflow)"
  mkdir -p "$DIR/artifacts"
  local recorded=""
  [ -s "$PORTF" ] && recorded="$(tr -dc 0-9 < "$PORTF")"
  if [ -n "${MARPIPE_MLFLOW_PORT:-}" ]; then
    port="$MARPIPE_MLFLOW_PORT"
    port_free "$port" || die "port $port (MARPIPE_MLFLOW_PORT) is taken on $HOST"
  elif [ -n "$recorded" ] && port_free "$recorded"; then
    port="$recorded"
  elif port_free 5000; then
    port=5000
  else
    port="$(free_port)"
  fi
  if [ -n "$recorded" ] && [ "$port" != "$recorded" ]; then
    log "WARNING: the recorded port $recorded is taken; the server moves to port $port:" \
        "clients holding http://$HOST:$recorded must be given the new URI (MLFLOW_TRACKING_URI)"
  fi
  echo "$port" > "$PORTF"
  uri="http://$HOST:$port"
  local app=()
  case "$HOST" in         # the Host header clients send must be allowed (MLflow: localhost + private IPs)
    127.0.0.1|localhost) ;;
    *) app+=(--allowed-hosts "$HOST:$port,$HOST,localhost:*,127.0.0.1:*") ;;
  esac
  if auth_on; then
    app+=(--app-name basic-auth)
    export MLFLOW_AUTH_CONFIG_PATH MLFLOW_FLASK_SERVER_SECRET_KEY
    MLFLOW_AUTH_CONFIG_PATH="$(auth_config)"
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$AUTHD/secret_key")"
    log "basic auth on: user marpipe, password in $AUTHD/password"
  fi
  # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: no job runner + workers (2.3 GB -> ~0.5 GB)
  # setsid: own process group, so `down` stops the server and every worker it forked.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$mlflow" server "${app[@]}" \
      --host "$HOST" --port "$port" \
      --backend-store-uri "sqlite:///$DIR/mlflow.db" \
      --artifacts-destination "$DIR/artifacts" --serve-artifacts \
      --workers "${MARPIPE_MLFLOW_WORKERS:-2}" \
      </dev/null >"$DIR/server.log" 2>&1 &
  echo $! > "$PIDF"
  local i
  for i in $(seq 240); do
    if healthy "$uri"; then
      echo "$uri" > "$URIF"
      log "server up at $uri in $((SECONDS - t0)) s (pgid $(cat "$PIDF"))"
      echo "$uri"; return 0
    fi
    running || { tail -n 30 "$DIR/server.log" >&2; die "server exited; see $DIR/server.log"; }
    sleep 0.5
  done
  tail -n 30 "$DIR/server.log" >&2
  cmd_down
  die "no /health answer from $uri after 120 s"
}

cmd_down() {
  if [ -s "$PIDF" ]; then
    local pg i
    pg="$(cat "$PIDF")"
    if kill -0 "$pg" 2>/dev/null || kill -0 -- "-$pg" 2>/dev/null; then
      kill -TERM -- "-$pg" 2>/dev/null || true
      for i in $(seq 100); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
      kill -0 -- "-$pg" 2>/dev/null && kill -KILL -- "-$pg" 2>/dev/null || true
      log "server stopped (pgid $pg)"
    fi
    rm -f "$PIDF"
  fi
  rm -f "$URIF"
}

cmd_status() {
  if running && [ -s "$URIF" ] && healthy "$(cat "$URIF")"; then cat "$URIF"
  else echo "not running" >&2; return 1; fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
