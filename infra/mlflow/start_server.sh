#!/usr/bin/env bash
# Starts the MLflow tracking server for cytotune studies: runs in PostgreSQL, artifacts on shared storage or in an
# S3-compatible bucket (proxied by the server, so clients need no bucket credentials), bound to 127.0.0.1 unless
# told otherwise, and behind MLflow's basic-auth app unless a reverse proxy authenticates instead.
#
#   infra/mlflow/start_server.sh                  # settings from the environment or ~/.cytotune/mlflow.env
#
# Settings (put secrets in ~/.cytotune/mlflow.env, chmod 600, never in the repository):
#   MLFLOW_BACKEND_STORE_URI      postgresql://USER@HOST:5432/DB (required; keep the password in ~/.pgpass or
#                                 PGPASSWORD rather than in the URI)
#   MLFLOW_ARTIFACTS_DESTINATION  /mnt/cytotune/mlflow-artifacts, or s3://BUCKET/PREFIX (needs boto3 and
#                                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; MLFLOW_S3_ENDPOINT_URL for MinIO)
#                                 default: $MLFLOW_STATE_DIR/artifacts
#   MLFLOW_HOST                   interface to bind (default 127.0.0.1; a private address for a cluster network)
#   MLFLOW_PORT                   default 5000
#   MLFLOW_WORKERS                default 2
#   MLFLOW_ALLOWED_HOSTS          Host headers accepted, when served under a name (e.g. mlflow.lab.internal)
#   MLFLOW_AUTH                   basic-auth (default) or proxy (only behind a reverse proxy that authenticates
#                                 every request; see infra/README.md)
#   MLFLOW_AUTH_ADMIN_PASSWORD    first start with basic-auth: the password of the admin user it creates
#   MLFLOW_AUTH_DATABASE_URI      the user store of basic-auth (default: a SQLite file in MLFLOW_STATE_DIR)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  CSRF key of basic-auth (default: made once, kept in MLFLOW_STATE_DIR)
#   MLFLOW_STATE_DIR              default ~/.cytotune/mlflow-server
set -euo pipefail

if [[ -f "$HOME/.cytotune/mlflow.env" ]]; then
    # shellcheck source=/dev/null
    source "$HOME/.cytotune/mlflow.env"
fi

backend="${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI=postgresql://USER@HOST:5432/DB}"
case "$backend" in
    postgresql://* | postgresql+*://*) ;;
    *)
        echo "start_server.sh: MLFLOW_BACKEND_STORE_URI must be a postgresql:// URI, got '${backend%%://*}://...'" >&2
        exit 2
        ;;
esac
state="${MLFLOW_STATE_DIR:-$HOME/.cytotune/mlflow-server}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-2}"
auth="${MLFLOW_AUTH:-basic-auth}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$state/artifacts}"

mkdir -p "$state"
chmod 700 "$state"
if [[ "$artifacts" != *://* ]]; then
    mkdir -p "$artifacts"
fi

args=(
    --backend-store-uri "$backend"
    --serve-artifacts
    --artifacts-destination "$artifacts"
    --host "$host"
    --port "$port"
    --workers "$workers"
)
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
    args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

case "$auth" in
    basic-auth)
        if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
            if [[ ! -s "$state/flask_secret_key" ]]; then
                (umask 077 && python -c 'import secrets; print(secrets.token_hex(32))' > "$state/flask_secret_key")
            fi
            MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$state/flask_secret_key")"
            export MLFLOW_FLASK_SERVER_SECRET_KEY
        fi
        auth_db="${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$state/basic_auth.db}"
        (
            umask 077
            printf '%s\n' '[mlflow]' 'default_permission = READ' "database_uri = $auth_db" \
                "admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" \
                'authorization_function = mlflow.server.auth:authenticate_request_basic_auth' \
                > "$state/basic_auth.ini"
        )
        export MLFLOW_AUTH_CONFIG_PATH="$state/basic_auth.ini"
        args+=(--app-name basic-auth)
        ;;
    proxy)
        if [[ "$host" != "127.0.0.1" && "$host" != "localhost" ]]; then
            echo "start_server.sh: MLFLOW_AUTH=proxy serves without authentication, so it binds 127.0.0.1 only" \
                "(the proxy on this machine forwards to it); got MLFLOW_HOST=$host" >&2
            exit 2
        fi
        ;;
    *)
        echo "start_server.sh: MLFLOW_AUTH must be basic-auth or proxy, got '$auth'" >&2
        exit 2
        ;;
esac

echo "start_server.sh: MLflow on http://$host:$port (auth: $auth, artifacts: $artifacts)" >&2
exec mlflow server "${args[@]}"
