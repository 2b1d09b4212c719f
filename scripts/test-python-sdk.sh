#!/usr/bin/env bash
# The Python participant SDK's tests (sdk/python): a virtualenv of its own
# (target/python-sdk), the package installed from this checkout (its gRPC
# stubs generated from proto/ while it builds), its types checked with
# `mypy --strict`, then pytest, whose output is kept in
# target/python-sdk/pytest.log (its last line the summary .ci/run prints).
# `cargo test --workspace` runs it (tests/tests/python); it needs no cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-sdk
# examples/python/setup.sh builds the same package at the same time when
# cargo runs the tests in parallel; pip builds in the source tree, so one
# build at a time (the lock is released before the tests run).
exec 9> sdk/python/.build.lock
flock 9
if [[ ! -x "$venv/bin/python" ]]; then
    if ! python3 -m venv "$venv"; then
        # Debian splits venv out of python3; install it when we may.
        if command -v apt-get > /dev/null && [[ "$(id -u)" == 0 ]]; then
            apt-get install -y -qq python3-venv > /dev/null
            python3 -m venv "$venv"
        else
            echo "python3 -m venv failed: install python3-venv" >&2
            exit 1
        fi
    fi
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "./sdk/python[test]"
exec 9>&-
(cd sdk/python && "../../$venv/bin/mypy" --strict src tests)
(cd sdk/python && "../../$venv/bin/pytest" -q -p no:cacheprovider tests) 2>&1 | tee "$venv/pytest.log"
