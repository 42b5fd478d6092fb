#!/usr/bin/env bash
# The council's Chroma server, with Chroma's own token authentication on.
#
#   CHROMA_TOKEN_FILE=~/.council/chroma_token clusters/chroma-server.sh DATA_DIR HOST PORT
#
# Run by clusters/council-chroma.service (systemd restarts it when it exits) on the launcher's head, and by
# clusters/kuberay/chroma.yaml's container; tests/unit/test_chroma_auth.py runs this very script.
#
# Why not `chroma run`: chromadb 1.5's `chroma run` is the Rust server, whose authentication is a no-op — it
# ignores CHROMA_SERVER_AUTHN_PROVIDER and answers every request (checked here with 1.5.9). Chroma's token
# authentication (chromadb.auth.token_authn) lives in its Python server, `chromadb.app:app`, over the same
# storage (the Rust bindings): the same folder serves either way.
#
# The token: CHROMA_SERVER_AUTHN_CREDENTIALS, or a file named by CHROMA_TOKEN_FILE (one line). Chroma's own
# CHROMA_SERVER_AUTHN_CREDENTIALS_FILE is not used: it keeps the file's trailing newline as part of the token,
# so no client token ever matches. Clients send it from COUNCIL_CHROMA_TOKEN (council/config.py, retrieval.token_env).
set -euo pipefail

usage="usage: chroma-server.sh DATA_DIR HOST PORT (token: CHROMA_SERVER_AUTHN_CREDENTIALS or CHROMA_TOKEN_FILE)"
data=${1:?$usage}
host=${2:?$usage}
port=${3:?$usage}

if [[ -z "${CHROMA_SERVER_AUTHN_CREDENTIALS:-}" ]]; then
  if [[ -z "${CHROMA_TOKEN_FILE:-}" ]]; then
    echo "chroma-server.sh: no token: set CHROMA_SERVER_AUTHN_CREDENTIALS or CHROMA_TOKEN_FILE (refusing to serve without auth)" >&2
    exit 2
  fi
  CHROMA_SERVER_AUTHN_CREDENTIALS=$(tr -d '\r\n' < "$CHROMA_TOKEN_FILE")
  if [[ -z "$CHROMA_SERVER_AUTHN_CREDENTIALS" ]]; then
    echo "chroma-server.sh: $CHROMA_TOKEN_FILE is empty (refusing to serve without auth)" >&2
    exit 2
  fi
fi
unset CHROMA_SERVER_AUTHN_CREDENTIALS_FILE
export CHROMA_SERVER_AUTHN_CREDENTIALS
export CHROMA_SERVER_AUTHN_PROVIDER=chromadb.auth.token_authn.TokenAuthenticationServerProvider
export IS_PERSISTENT=1 PERSIST_DIRECTORY="$data" ANONYMIZED_TELEMETRY=False

mkdir -p "$data"
# One worker: one process owns the folder (an embedded Chroma folder is safe for one process only).
exec "${PYTHON:-python3}" -m uvicorn chromadb.app:app --host "$host" --port "$port" --workers 1
