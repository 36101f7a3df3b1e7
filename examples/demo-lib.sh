# Shared by the example scripts (sourced, not run): the project's .venv, progress lines, a
# temporary work folder, a trap on EXIT that stops by PID everything the script put in
# `pids` (and keeps the folder with KEEP=1 or on failure), a loopback port, corral's URL,
# an admin token for the demo server, the CLI as that admin, and `wait_for`.
# Set `demo` (the work folder's name) before sourcing.

root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
bin="$root/.venv/bin"
if [[ ! -x "$bin/corral" ]]; then
    echo "no $bin/corral: run scripts/setup.sh first (it makes the .venv)" >&2
    exit 1
fi

free_port() {
    "$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

step() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*"; }

work=$(mktemp -d -t "corral-${demo:-demo}.XXXXXX")
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP:-}" == 1 || $status -ne 0 ]]; then
        echo "logs and state kept in $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
cd "$work" # no stray ./corral.yaml is read

port=${PORT:-$(free_port)}
url="http://127.0.0.1:$port"
admin="crl_demo_$("$bin/python" -c 'import secrets; print(secrets.token_hex(16))')"

corral() { # the CLI, as the admin of this demo's server
    CORRAL_URL="$url" CORRAL_TOKEN="$admin" "$bin/corral" "$@"
}

wait_for() { # wait_for SECONDS WHAT COMMAND...: run COMMAND every 0.2 s until it succeeds
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "timed out after $limit s waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}
