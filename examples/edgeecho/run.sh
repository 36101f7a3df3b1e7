#!/usr/bin/env bash
# edgeECHO end to end on this machine: corral serves the seed's API on 127.0.0.1:5000,
# the seed's own request starts a segmented session, then a plain one through the CLI;
# the emulators' counts show every message arrived, and the reaper leaves nothing behind.
set -euo pipefail
here="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
cd "$here/../.."
./scripts/setup.sh >/dev/null
"$here/emulators/build.sh"

home=$(mktemp -d)
export CORRAL_HOME=$home CORRAL_TEMPLATES_DIR=$here CORRAL_EDGEECHO_PORT=5000
export CORRAL_EDGEECHO_ANONYMOUS=true CORRAL_SESSION_GRACE_SECONDS=2
.venv/bin/corral serve --port 8750 >"$home/serve.log" 2>&1 &
serve=$!
trap 'kill "$serve" 2>/dev/null; wait "$serve" 2>/dev/null || true; rm -rf "$home"' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:8750/healthz >/dev/null && break; sleep 0.2; done
export CORRAL_URL=http://127.0.0.1:8750
export CORRAL_TOKEN=$(grep -o 'CORRAL_TOKEN=crl_[A-Za-z0-9_-]*' "$home/serve.log" | cut -d= -f2)

echo "== the seed's request (first time: corral builds the three images)"
set -x
curl -s http://127.0.0.1:5000/test; echo
curl -s -X POST http://127.0.0.1:5000/post/ -H "Content-Type: application/json" \
     -d '{"count": 1000, "plain_stream": false}' | tee "$home/answer.json"; echo
{ set +x; } 2>/dev/null
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["session_id"])' "$home/answer.json")

echo "== a plain stream through the CLI"
.venv/bin/corral session new edgeecho -p count=1000 -p plain_stream=true
sleep 4
.venv/bin/corral session ls
echo "== what the segmentation server counted in session $id"
.venv/bin/corral session logs "$id" segmentation --tail 1
echo "== left on the engine (nothing expected)"
docker ps -a --filter "label=corral.session" --format '{{.Names}} {{.Status}}'
docker network ls --filter "label=corral.session" --format '{{.Name}}'
.venv/bin/corral events -n 12
