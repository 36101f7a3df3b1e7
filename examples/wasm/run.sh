#!/usr/bin/env bash
# The Wasm example end to end on this machine: corral serves on loopback with mDNS on,
# three `corral agent` devices advertise themselves and are found, the two example modules
# are pushed and described, the chain double -> add_ten is deployed and run (16 -> 42),
# then the first step's device is killed with SIGKILL and the chain runs again through
# failover; last, files: a call with a file, and a chain that passes one on. Everything started here listens on 127.0.0.1 and is stopped by PID on exit.
#
# Environment: PORT (corral's port; default a free one), AGENTS (2 or 3; default 3),
# KEEP=1 keeps the work folder (logs, state) instead of removing it.
set -euo pipefail

demo=wasm-demo
here="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
source "$here/../demo-lib.sh"
agents=${AGENTS:-3}
if [[ "$agents" != 2 && "$agents" != 3 ]]; then
    echo "AGENTS must be 2 or 3, not $agents" >&2
    exit 2
fi

json_field() { # json_field EXPR: evaluate EXPR on the JSON document read from stdin (`d`)
    "$bin/python" -c "import json, sys; d = json.load(sys.stdin); print($1)"
}


step "building the modules (examples/wasm/modules/*.wat -> .wasm)"
"$bin/python" "$here/build.py"

step "starting corral serve on $url (home $work/corral, mDNS on, accepting demo-*)"
CORRAL_BOOTSTRAP_TOKEN="$admin" CORRAL_LOCAL_DOCKER_URL="" \
    CORRAL_MDNS_ENABLED=true CORRAL_MDNS_ACCEPT='["demo-*"]' \
    CORRAL_DEVICE_HEALTH_SECONDS=1 \
    "$bin/corral" serve --bind 127.0.0.1 --port "$port" --home "$work/corral" \
    >"$work/serve.log" 2>&1 &
pids+=("$!")
serve_pid=$!
wait_for 60 "corral to answer on $url" curl -sf "$url/healthz"
echo "corral is up (pid $serve_pid)"

step "issuing device tokens and starting $agents agents (advertised over mDNS)"
names=()
declare -A agent_pid
for i in $(seq 1 "$agents"); do
    name="demo-$i"
    names+=("$name")
    token=$(corral --json device token "$name" | json_field 'd["token"]')
    agent_port=$(free_port)
    "$bin/corral" agent --name "$name" --bind 127.0.0.1 --port "$agent_port" \
        --home "$work/agents/$name" --token "$token" >"$work/$name.log" 2>&1 &
    pids+=("$!")
    agent_pid[$name]=$!
    echo "agent $name on 127.0.0.1:$agent_port (pid $!)"
done

all_found() { # every agent listed by `corral device ls`, active and described
    corral --json device ls | "$bin/python" -c '
import json, sys
found = {d["name"]: d for d in json.load(sys.stdin)}
sys.exit(not all(
    n in found and found[n]["status"] == "active" and found[n]["description"]
    for n in sys.argv[1:]
))' "${names[@]}"
}

step "waiting until corral has found them (corral device ls)"
wait_for 60 "the agents to be found over mDNS" all_found
corral device ls

step "pushing the modules with their function descriptions"
corral module push "$here/modules/double.wasm" --describe "$here/functions/double.yml"
corral module push "$here/modules/add_ten.wasm" --describe "$here/functions/add_ten.yml"
corral module ls

step "creating and deploying the chain (chain.yml)"
corral deployment create "$here/chain.yml"
corral deployment ls

step "running it: corral deployment run chain -p x=16"
result=$(corral deployment run chain -p x=16)
echo "$result"
if [[ "$result" != 42 ]]; then
    echo "expected 42, got: $result" >&2
    exit 1
fi

victim=$(corral --json deployment show chain | json_field 'd["steps"][0]["device"]')
step "killing $victim (the first step's device, pid ${agent_pid[$victim]}) with SIGKILL"
kill -KILL "${agent_pid[$victim]}"
wait "${agent_pid[$victim]}" 2>/dev/null || true

step "running it again: the chain fails over to the other devices"
result=$(corral deployment run chain -p x=16)
echo "$result"
if [[ "$result" != "42 (failover)" ]]; then
    echo "expected '42 (failover)', got: $result" >&2
    exit 1
fi
corral deployment ls

step "files: a module that reads a data file, a file sent with the call, and an output file"
corral module push "$here/modules/files.wasm" --describe "$here/functions/files.yml" \
    --data "data.txt=$here/data.txt"
corral deployment create "$here/sized.yml"
printf 'hello' >"$work/input.bin"
result=$(corral deployment run sized -f "input.bin=$work/input.bin")
echo "corral deployment run sized -f input.bin=(5 bytes): $result"
if [[ "$result" != 5* ]]; then
    echo "expected 5, got: $result" >&2
    exit 1
fi
corral deployment create "$here/files-chain.yml"
result=$(corral deployment run files-chain -p n=7)
echo "corral deployment run files-chain -p n=7 (out.txt passed on as input.bin): $result"
if [[ "$result" != 7* ]]; then
    echo "expected 7, got: $result" >&2
    exit 1
fi

step "done: stopping corral and the agents"
