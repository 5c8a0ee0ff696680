#!/usr/bin/env bash
# Installs what the test suite needs from Debian when it is missing: redis-server, postgresql and chromium.
# The tests start their own redis-server and PostgreSQL (initdb in a temp dir, a free port; as root they
# run it as the `postgres` user the package creates); nothing is started here.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Debian keeps initdb/postgres in /usr/lib/postgresql/<version>/bin, off PATH; tests/postgres_fixture.py looks there.
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  need+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test services: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
