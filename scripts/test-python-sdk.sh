#!/usr/bin/env bash
# The Python participant SDK's tests (sdk/python): a virtualenv of its own
# (target/python-sdk), the package installed from this checkout (its gRPC
# stubs generated from proto/ while it builds), the SDK README's install
# command run as printed from a read-only copy of the checkout (a build
# writes nothing into its source tree), the types checked with
# `mypy --strict`, then pytest, whose output is kept in
# target/python-sdk/pytest.log (its last line the summary .ci/run prints).
# `cargo test --workspace` runs it (tests/tests/python); it needs no cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
venv=target/python-sdk
# One run at a time per virtualenv (a run by hand beside cargo's), to the
# end. The lock is the directory itself, so nothing is written to hold it.
# A build writes nothing into sdk/python, so examples/python/setup.sh,
# building the same package into its own virtualenv at the same time, needs
# no lock shared with this one.
mkdir -p "$venv"
exec 9< "$venv"
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

# Issue 32: `pip install ./sdk/python` writes nothing into the checkout, so
# it works from a read-only one. sdk/python/README.md's commands (its block
# fenced `sh`) are run as printed, in a fresh virtualenv as a user would,
# from the root of a copy of sdk/python and proto/ that cannot be written
# to: they must succeed, install the package with its stubs, and leave
# every file and directory of the copy as it was. Root ignores mode bits:
# as root, the copy is also mounted read-only for them (in a namespace of
# their own) where the system allows it; the comparison afterwards holds
# either way.
commands="$(awk '/^```/ { if (block) exit; block = ($0 == "```sh"); next } block' sdk/python/README.md)"
if [[ "$commands" != *"pip install ./sdk/python"* ]]; then
    echo "sdk/python/README.md's first block fenced sh no longer installs ./sdk/python" >&2
    exit 1
fi
scratch="$(mktemp -d)"
trap 'chmod -R u+w "$scratch"; rm -rf "$scratch"' EXIT
mkdir -p "$scratch/checkout/sdk" "$scratch/checkout/proto"
python3 -m venv "$scratch/venv"
cp -R sdk/python "$scratch/checkout/sdk/"
cp -R proto/proto "$scratch/checkout/proto/"
chmod -R a-w "$scratch/checkout"
read_only=()
if [[ "$(id -u)" == 0 ]] && unshare --mount --map-root-user true 2> /dev/null; then
    read_only=(unshare --mount --map-root-user sh -c
        'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        sh "$scratch/checkout")
fi
listing() { (cd "$scratch/checkout" && find . -printf '%p %y %s %T@ %m\n' | sort); }
before="$(listing)"
if ! (cd "$scratch/checkout" && VIRTUAL_ENV="$scratch/venv" PATH="$scratch/venv/bin:$PATH" \
    PIP_QUIET=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ${read_only[@]+"${read_only[@]}"} bash -euc "$commands"); then
    echo "sdk/python/README.md's commands failed in a read-only checkout" >&2
    exit 1
fi
if [[ "$(listing)" != "$before" ]]; then
    echo "pip install ./sdk/python changed the source tree:" >&2
    diff <(echo "$before") <(listing) >&2 || true
    exit 1
fi
if ! "$scratch/venv/bin/python" -c 'import concord_participant._proto.concord.v1.coordinator_pb2_grpc'
then
    echo "pip install ./sdk/python installed no gRPC stubs" >&2
    exit 1
fi

# The stubs are generated into the installed package, not into src/, so
# the package's types are checked there (`-p` finds it in the virtualenv's
# site-packages; errors in a package named on the command line are
# reported wherever it lives): the same sources, with the stubs beside
# them. Then the tests' own, against it. sdk/python's pyproject.toml is the
# configuration; the cache goes under target/, so a run writes nothing into
# sdk/python either.
mypy=("../../$venv/bin/mypy" --strict --cache-dir "../../$venv/mypy-cache")
(cd sdk/python && "${mypy[@]}" -p concord_participant && "${mypy[@]}" tests)
(cd sdk/python && PYTHONPYCACHEPREFIX="$root/$venv/pycache" \
    "../../$venv/bin/pytest" -q -p no:cacheprovider tests) 2>&1 | tee "$venv/pytest.log"
