#!/usr/bin/env bash
# The print farm end to end: corral with the farm on, the farm file, the simulated arm, six
# printers that finish their prints (their ids pushed to `ready` as the seed does), then
# the arm's record.
set -euo pipefail
here="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
cd "$here/../.."
./scripts/setup.sh >/dev/null

home=$(mktemp -d)
export CORRAL_HOME=$home CORRAL_CONFIG=$here/corral.yaml
.venv/bin/corral serve --port 8750 >"$home/serve.log" 2>&1 &
serve=$!
.venv/bin/python "$here/simulators.py" arm --work 1 --record "$home/arm.jsonl" &
arm=$!
trap 'kill "$serve" "$arm" 2>/dev/null; wait "$serve" "$arm" 2>/dev/null || true; rm -rf "$home"' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:8750/healthz >/dev/null && break; sleep 0.2; done
export CORRAL_URL=http://127.0.0.1:8750
export CORRAL_TOKEN=$(grep -o 'CORRAL_TOKEN=crl_[A-Za-z0-9_-]*' "$home/serve.log" | cut -d= -f2)

echo "== brokers and the farm"
.venv/bin/corral broker ls
.venv/bin/corral farm apply "$here/farm.yml"
.venv/bin/corral farm printers
echo "== printers 11..16 finish (the seed's pika publish)"
.venv/bin/python "$here/simulators.py" printers 11 12 13 14 15 16 --every 0.5
sleep 16
.venv/bin/corral task ls
.venv/bin/corral farm beds
echo "== what the arm received"
cut -c1-160 "$home/arm.jsonl"
.venv/bin/corral trigger ls
