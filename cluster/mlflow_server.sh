#!/bin/sh
# The MLflow tracking server of a cluster's head node, started by cluster/aws.yaml, gcp.yaml and
# kuberay/raycluster.yaml. It must listen beyond loopback (trials on worker nodes log to it), so every request is
# authenticated: MLflow's basic-auth app, one admin user "pixeldrl" whose password is the cluster's Ray token (the
# secret every node already holds), so nothing new has to be distributed. Nodes and jobs log with
# PIXELDRL_MLFLOW_AUTH=ray-token (rl_agents/experiment/tracking.py sets MLflow's username and password from it).
#   cluster/mlflow_server.sh HOST PORT STORE_DIR
set -eu
HOST="${1:-127.0.0.1}"  # the cluster files pass 0.0.0.0 on purpose; loopback unless told
PORT="${2:-5000}"
STORE="${3:-$HOME}"
TOKEN="${RAY_AUTH_TOKEN:-$(cat "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}")}"
[ -n "$TOKEN" ] || { echo "mlflow_server.sh: no Ray token (RAY_AUTH_TOKEN or ~/.ray/auth_token)" >&2; exit 2; }
umask 077  # the config holds the password: readable by this user only
mkdir -p "$STORE"
cat > "$STORE/mlflow_auth.ini" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$STORE/mlflow_auth.db
admin_username = pixeldrl
admin_password = $TOKEN
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
# the key of the UI's CSRF tokens: one server, so a fresh random key at each start is consistent
MLFLOW_FLASK_SERVER_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_hex(32))')"
export MLFLOW_FLASK_SERVER_SECRET_KEY
MLFLOW_AUTH_CONFIG_PATH="$STORE/mlflow_auth.ini" exec mlflow server --app-name basic-auth \
    --backend-store-uri "sqlite:///$STORE/mlflow.db" --artifacts-destination "$STORE/mlartifacts" \
    --host "$HOST" --port "$PORT"
