#!/usr/bin/env bash
# Sets up the Python participant: a virtualenv in .venv with the Python SDK
# (sdk/python) installed from this checkout, which generates its gRPC stubs
# from the project's proto files as it builds. Idempotent: does nothing when
# the SDK and the protos have not changed since the last run.
set -euo pipefail
cd "$(dirname "$0")"
sdk=../../sdk/python
# Tests start several Python services at once, each running this script:
# one creates and fills .venv at a time, the others wait and find it ready.
# The lock is this directory itself, so nothing is written to hold it. The
# build writes nothing into sdk/python, so scripts/test-python-sdk.sh
# building the same package into its own virtualenv meanwhile is no matter.
exec 9< .
flock 9
stamp=.venv/.concord-ready
want="$(find "$sdk/pyproject.toml" "$sdk/setup.py" "$sdk/src" ../../proto/proto -type f \
    \( -name '*.py' -o -name '*.proto' -o -name '*.toml' \) -not -path '*/_proto/*' \
    | sort | xargs cat | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
if [[ ! -x .venv/bin/python ]] && ! python3 -m venv .venv; then
    # Debian splits venv out of python3; install it when we may.
    if command -v apt-get > /dev/null && [[ "$(id -u)" == 0 ]]; then
        apt-get install -y -qq python3-venv > /dev/null
        python3 -m venv .venv
    else
        echo "python3 -m venv failed: install python3-venv" >&2
        exit 1
    fi
fi
.venv/bin/pip install --quiet --disable-pip-version-check "$sdk"
echo "$want" > "$stamp"
