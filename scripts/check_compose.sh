#!/usr/bin/env bash
# Validate docker-compose.yml offline (`docker-compose config`: schema, interpolation, references) with dummy
# values for the required variables and the Hub-token secret; no Docker daemon is needed. Also checks that the
# required variables really are required and that every variable the file uses is documented in .env.example.
# Installs docker-compose from apt when it is missing and apt is usable; otherwise says it skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "check_compose: installing docker-compose with apt-get"
  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
  log=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose; } </dev/null >"$log" 2>&1
  then
    cat "$log" >&2
    echo "check_compose: apt-get could not install docker-compose" >&2
    exit 1
  fi
  rm -f "$log"
  compose=(docker-compose)
else
  echo "check_compose: SKIPPED — neither docker-compose nor 'docker compose' found, and apt-get (as root) is not available to install it"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/hf_token"
# A fixed env file: the committed compose file is checked, not whatever a local .env holds.
cat >"$tmp/env" <<EOF
SLIMKIT_TOKEN_PEPPER=dummy-pepper-for-config-check-only
POSTGRES_PASSWORD=dummy
SLIMKIT_HF_TOKEN_PATH=$tmp/hf_token
EOF
run_config() { "${compose[@]}" --env-file "$1" -f docker-compose.yml config "${@:2}"; }

run_config "$tmp/env" -q
services=$(run_config "$tmp/env" --services | sort | tr '\n' ' ')
for s in postgres redis api worker flower; do
  [[ " $services " == *" $s "* ]] || { echo "check_compose: service '$s' missing (found: $services)" >&2; exit 1; }
done

# The required variables must stop the deployment when unset (`${VAR:?…}`), not start it with an empty secret.
for var in SLIMKIT_TOKEN_PEPPER POSTGRES_PASSWORD; do
  grep -v "^$var=" "$tmp/env" >"$tmp/env.missing"
  if (unset "$var"; run_config "$tmp/env.missing" -q) >/dev/null 2>&1; then
    echo "check_compose: docker-compose.yml accepted an unset $var" >&2
    exit 1
  fi
done

# Every variable the compose file interpolates is documented in .env.example.
# shellcheck disable=SC2013,SC2016  # variable names are single words; the pattern is literal
for var in $(grep -o '\${[A-Z_][A-Z0-9_]*' docker-compose.yml | cut -c3- | sort -u); do
  grep -Eq "^#?$var=" .env.example || { echo "check_compose: $var is not documented in .env.example" >&2; exit 1; }
done

# What the compose file builds from must exist.
for f in docker/api.Dockerfile docker/worker.Dockerfile docker/api-entrypoint.sh .dockerignore; do
  [ -f "$f" ] || { echo "check_compose: $f is missing" >&2; exit 1; }
done
sh -n docker/api-entrypoint.sh

echo "check_compose: docker-compose.yml is valid ($("${compose[@]}" version --short 2>/dev/null || echo "?"); services: $services)"
