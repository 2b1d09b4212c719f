#!/usr/bin/env bash
# Installs the PostgreSQL server programs (initdb, postgres) from the
# distribution's packages when they are missing. The tests start their own
# throwaway server from them; no system cluster is created or started.
set -euo pipefail

if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

# Debian's package would create and start a main cluster; the tests need none.
$sudo mkdir -p /etc/postgresql-common
echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null

$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
echo "installed: $(ls /usr/lib/postgresql/*/bin/initdb)"
