#!/bin/sh
# Create one virtualenv per peer Sigma evaluator (bench-only dependencies).
# sigma-rule-matcher needs pySigma<2 while pySigma's SQLite backend needs pySigma 2,
# so they cannot share the project's venv.  Usage: bench/peers/setup.sh [python]
set -eu
PY=${1:-python3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mk() {
    name=$1; shift
    if [ ! -x "$HERE/.venv-$name/bin/python" ]; then
        "$PY" -m venv "$HERE/.venv-$name"
    fi
    "$HERE/.venv-$name/bin/python" -m pip install -q --disable-pip-version-check "$@"
}
# azuma imports `packaging` without declaring it
mk azuma "azuma==0.7.3" packaging
mk srm "sigma-rule-matcher==0.1.0" "pysigma<2"
mk sqlite "pysigma>=2,<3" "pysigma-backend-sqlite>=2.1"
echo "peer venvs ready under $HERE/.venv-*"
