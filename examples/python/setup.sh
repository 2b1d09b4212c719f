#!/usr/bin/env bash
# Sets up the Python participant: a virtualenv in .venv with requirements.txt,
# and the gRPC stubs generated from the project's proto files into gen/.
# Idempotent: does nothing when both are up to date.
set -euo pipefail
cd "$(dirname "$0")"
proto=../../proto/proto
stamp=.venv/.concord-ready
want="$(cat requirements.txt "$proto"/concord/v1/*.proto | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d gen/concord/v1 ]]; then
    exit 0
fi
if ! python3 -m venv .venv; then
    # Debian splits venv out of python3; install it when we may.
    if command -v apt-get > /dev/null && [[ "$(id -u)" == 0 ]]; then
        apt-get install -y -qq python3-venv > /dev/null
        python3 -m venv .venv
    else
        echo "python3 -m venv failed: install python3-venv" >&2
        exit 1
    fi
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
rm -rf gen && mkdir -p gen
.venv/bin/python -m grpc_tools.protoc -I "$proto" --python_out=gen --grpc_python_out=gen \
    "$proto"/concord/v1/types.proto "$proto"/concord/v1/participant.proto
echo "$want" > "$stamp"
