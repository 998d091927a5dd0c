#!/usr/bin/env bash
# Install what `make test` and `make gate` need, once, then get out of the way:
#   1. the Debian packages with PostgreSQL 15, Redis 7, Prometheus (and
#      promtool), HAProxy and the PostgreSQL and Redis exporters (apt-get,
#      when root; none of them starts by itself: the harness starts them);
#   2. a virtualenv (.venv) with the project installed editable, with its dev
#      extras; reinstalled when pyproject.toml is newer than the last install.
# Safe to run again: it does nothing when everything is in place.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_BIN=/usr/lib/postgresql/15/bin
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.atendeai-installed"

say() { echo "bootstrap: $*"; }

# -- 1. Debian packages --------------------------------------------------------
missing=()
[ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
[ -x /usr/bin/prometheus-postgres-exporter ] || missing+=(prometheus-postgres-exporter)
[ -x /usr/bin/prometheus-redis-exporter ] || missing+=(prometheus-redis-exporter)
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian packages: ${missing[*]} (apt-get, takes a few seconds)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        say "installed ${missing[*]}"
    else
        echo "bootstrap: error: missing Debian packages: ${missing[*]}" >&2
        echo "  the local stack runs PostgreSQL 15, Redis 7, HAProxy, Prometheus and the" >&2
        echo "  PostgreSQL and Redis exporters as child processes;" >&2
        echo "  install them as root, then run make again:" >&2
        echo "    sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

# -- 2. virtualenv with the project ---------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "bootstrap: error: $PYTHON is not Python 3.11 or later (set PYTHON=...)" >&2
        exit 1
    fi
    say "creating the virtualenv $VENV ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    say "installing the project into $VENV (pip install -e '.[dev]')"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    touch "$STAMP"
fi
