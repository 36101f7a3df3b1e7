#!/usr/bin/env bash
# Install and start everything corral's tests need on a Debian 12 machine (run as root).
# Idempotent: on a warm machine it only checks and returns in a second or two.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
REPO_ROOT=$(pwd)

say() { echo "setup: $*"; }

port_open() { # port_open PORT -> 0 if something answers on 127.0.0.1:PORT
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

wait_port() { # wait_port PORT SECONDS NAME
  local i
  for ((i = 0; i < $2 * 2; i++)); do
    port_open "$1" && return 0
    sleep 0.5
  done
  say "ERROR: $3 does not answer on 127.0.0.1:$1 after $2 s" >&2
  return 1
}

if [[ $(id -u) -ne 0 ]]; then
  say "WARNING: not root; installing packages and starting services will probably fail" >&2
fi

# ---------------------------------------------------------------- apt packages
APT_UPDATED=0
apt_install() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
pkg_installed() { dpkg -s "$1" >/dev/null 2>&1; }

WANT=()
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  WANT+=(docker.io)
fi
pkg_installed busybox-static || WANT+=(busybox-static)
{ command -v ip >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1; } || WANT+=(iproute2)
command -v nsenter >/dev/null 2>&1 || WANT+=(util-linux)
command -v openssl >/dev/null 2>&1 || WANT+=(openssl)
command -v psql >/dev/null 2>&1 || WANT+=(postgresql-client)
# ssh:// hosts: the client runs `ssh`; the tests run a private sshd on loopback.
command -v ssh >/dev/null 2>&1 || WANT+=(openssh-client)
[[ -x /usr/sbin/sshd ]] || WANT+=(openssh-server)
# The dashboard's browser tests drive Debian's Chromium through Playwright (no download).
[[ -x /usr/bin/chromium ]] || WANT+=(chromium)

VENV_PROBE=$(mktemp -d)
if ! python3 -m venv --without-pip "$VENV_PROBE/v" >/dev/null 2>&1 \
  || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  WANT+=(python3-venv)
fi
rm -rf "$VENV_PROBE"

NEW_PG=0
if ! port_open 5672 && ! command -v rabbitmq-server >/dev/null 2>&1; then
  WANT+=(rabbitmq-server)
fi
if ! port_open 1883 && ! command -v mosquitto >/dev/null 2>&1; then
  WANT+=(mosquitto)
fi
if ! port_open 5432 && ! command -v pg_ctlcluster >/dev/null 2>&1; then
  WANT+=(postgresql); NEW_PG=1
fi

if [[ ${#WANT[@]} -gt 0 ]]; then
  apt_install "${WANT[@]}"
else
  say "apt packages present"
fi

# ---------------------------------------------------------------- dockerd
if docker info >/dev/null 2>&1; then
  say "dockerd running"
else
  say "starting dockerd (log: /var/log/dockerd.log)"
  setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
  for ((i = 0; i < 60; i++)); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    say "ERROR: dockerd did not answer within 30 s; see /var/log/dockerd.log" >&2
    exit 1
  fi
  say "dockerd up"
fi

# ---------------------------------------------------------------- RabbitMQ
if port_open 5672; then
  say "rabbitmq answers on 5672"
else
  say "starting rabbitmq-server"
  # Fails harmlessly if a node is already booting (e.g. started by the package).
  rabbitmq-server -detached || true
  rabbitmqctl -q await_startup --timeout 60 >/dev/null
  wait_port 5672 30 rabbitmq
  say "rabbitmq up"
fi

# ---------------------------------------------------------------- Mosquitto
if port_open 1883; then
  say "mosquitto answers on 1883"
else
  say "starting mosquitto"
  mkdir -p /run/mosquitto /var/log/mosquitto /var/lib/mosquitto
  if id mosquitto >/dev/null 2>&1; then
    chown mosquitto /run/mosquitto /var/log/mosquitto /var/lib/mosquitto
  fi
  mosquitto -d -c /etc/mosquitto/mosquitto.conf || true
  wait_port 1883 15 mosquitto
  say "mosquitto up"
fi

# ---------------------------------------------------------------- PostgreSQL
PG_VERSION=""
if [[ -d /etc/postgresql ]]; then
  PG_VERSION=$(ls /etc/postgresql | sort -V | tail -n 1)
fi
if [[ $NEW_PG -eq 1 && -n $PG_VERSION ]]; then
  PG_HBA=/etc/postgresql/$PG_VERSION/main/pg_hba.conf
  if ! grep -q 'corral scripts/setup.sh' "$PG_HBA"; then
    say "configuring postgresql $PG_VERSION for trust auth on 127.0.0.1"
    # Trust rules for loopback TCP go first, so they win over the packaged scram rules.
    hba_tmp=$(mktemp)
    {
      echo "# added by corral scripts/setup.sh: passwordless local TCP for tests"
      echo "host    all             all             127.0.0.1/32            trust"
      echo "host    all             all             ::1/128                 trust"
      cat "$PG_HBA"
    } >"$hba_tmp"
    cat "$hba_tmp" >"$PG_HBA"
    rm -f "$hba_tmp"
    # The package may have started the cluster already; make it re-read pg_hba.conf.
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main reload >/dev/null 2>&1 || true
  fi
fi
if port_open 5432; then
  say "postgresql answers on 5432"
else
  say "starting postgresql $PG_VERSION"
  pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start || true
  wait_port 5432 30 postgresql
  say "postgresql up"
fi
if command -v psql >/dev/null 2>&1; then
  if ! psql -h 127.0.0.1 -U postgres -d postgres -w -tAc 'SELECT 1' >/dev/null 2>&1; then
    say "WARNING: cannot connect to postgresql as postgres on 127.0.0.1 without password" >&2
  elif [[ -z $(psql -h 127.0.0.1 -U postgres -d postgres -w -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'test'") ]]; then
    say "creating database test"
    psql -h 127.0.0.1 -U postgres -d postgres -w -qc 'CREATE DATABASE test' >/dev/null
  fi
fi

# ---------------------------------------------------------------- Python venv
if [[ ! -x .venv/bin/python ]]; then
  if ! python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    say "ERROR: python3 on PATH is $(python3 -V 2>&1); corral needs >= 3.11" >&2
    exit 1
  fi
  say "creating .venv with $(python3 -V 2>&1)"
  rm -rf .venv
  python3 -m venv .venv
fi
if [[ -f .venv/.installed-stamp && .venv/.installed-stamp -nt pyproject.toml ]]; then
  say ".venv up to date"
else
  say "pip install -e '.[dev]' into .venv"
  .venv/bin/python -m pip install -q -e "$REPO_ROOT[dev]"
  touch .venv/.installed-stamp
fi

say "done"
