#!/usr/bin/env bash
# The Go1 scenario end to end on one machine: this machine's dockerd is EDGE, a second
# dockerd in a network namespace is ROBOT (10.231.0.2), both in one swarm; corral serves
# the Go1 API on 127.0.0.1:9999 and the seed's own curl commands drive it.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.."
./scripts/setup.sh >/dev/null

echo "== engines: EDGE (local) and ROBOT (netns corral-robot), joined in a swarm"
.venv/bin/python - <<'PY'
from tests.support.engines import ROBOT_URL, LOCAL_URL, RobotEngine, build_busybox_image, ensure_swarm
robot = RobotEngine().setup()
for url in (LOCAL_URL, ROBOT_URL):
    build_busybox_image(url)
ensure_swarm(robot)
PY

home=$(mktemp -d)
export CORRAL_HOME=$home CORRAL_LOCAL_DOCKER_URL= CORRAL_HOSTS_FILE=examples/go1/hosts.yml
export CORRAL_GO1_FILE=examples/go1/compose.yml CORRAL_GO1_PORT=9999 CORRAL_GO1_ANONYMOUS=true
export CORRAL_ENGINE_NETWORKS=127.0.0.0/8,10.231.0.0/24
.venv/bin/corral serve --port 8750 >"$home/serve.log" 2>&1 &
serve=$!
trap 'kill "$serve" 2>/dev/null; wait "$serve" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:8750/healthz >/dev/null && break; sleep 0.2; done
export CORRAL_URL=http://127.0.0.1:8750
export CORRAL_TOKEN=$(grep -o 'CORRAL_TOKEN=crl_[A-Za-z0-9_-]*' "$home/serve.log" | cut -d= -f2)
.venv/bin/corral host ls

echo; echo "== the seed's curl commands"
set -x
curl -X POST http://localhost:9999/deploy/ -H "Content-Type: application/json"
{ set +x; } 2>/dev/null; echo; .venv/bin/corral ps go1; set -x
curl -X POST http://localhost:9999/stop/ -d '{"containerName": ["rviz-vnc", "go1-base"]}' -H "Content-Type: application/json"
curl -X POST http://localhost:9999/start/ -d '{"containerName": ["rviz-vnc", "go1-base"]}' -H "Content-Type: application/json"
{ set +x; } 2>/dev/null; echo
echo "== across the overlay: go1-base (ROBOT) reaches ros-master (EDGE) by name"
docker -H tcp://10.231.0.2:2375 exec go1-go1-base-1 sh -c 'nc -w 3 ros-master 11311 </dev/null && echo reachable'
.venv/bin/corral logs go1 lidar-drivers --tail 3
set -x
curl -X POST http://localhost:9999/terminate/ -H "Content-Type: application/json"
{ set +x; } 2>/dev/null; echo
.venv/bin/corral events -n 15
