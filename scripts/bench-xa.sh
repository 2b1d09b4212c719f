#!/usr/bin/env bash
# Concord's 2PC beside raw XA on PostgreSQL, in one command on a fresh
# machine (issue 20, docs/performance.md): installs PostgreSQL's programs if
# missing, starts a throwaway server in a temp dir (fsync on, as shipped;
# max_prepared_transactions raised for XA), runs `bank-bench` against it
# (release build), and removes the server when done.
#
#   scripts/bench-xa.sh                       # 64 clients, 10 s per run
#   scripts/bench-xa.sh --clients 16 --duration 5s --json
#   BANK_BENCH=other/target/release/bank-bench scripts/bench-xa.sh
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/install-postgres.sh"
bin_dir() {
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1
}
pg="$(bin_dir)"

dir="$(mktemp -d)"
run_as=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root.
  user=postgres; id postgres >/dev/null 2>&1 || user=nobody
  chown -R "$(id -u "$user"):$(id -g "$user")" "$dir"
  run_as=(setpriv "--reuid=$(id -u "$user")" "--regid=$(id -g "$user")" --clear-groups --)
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${run_as[@]}" "$pg/initdb" -D "$dir/data" -U concord -A trust -E UTF8 --no-instructions >/dev/null
"${run_as[@]}" "$pg/postgres" -D "$dir/data" -p "$port" -k "$dir" \
  -c listen_addresses=127.0.0.1 -c max_connections=500 -c max_prepared_transactions=400 \
  >"$dir/postgres.log" 2>&1 &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done

cd "$here"
# BANK_BENCH=path/to/bank-bench runs a build made elsewhere.
bench="${BANK_BENCH:-}"
if [ -z "$bench" ]; then
  cargo build --release --quiet -p concord-example-bank --bin bank-bench
  bench=target/release/bank-bench
fi
"$bench" --postgres "postgres://concord@127.0.0.1:$port/postgres" "$@"
