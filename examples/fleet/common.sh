# Shared by crossing.sh and deadlock.sh (sourced, not run): a corral server on loopback
# in a temporary home, the CLI as its admin, virtual robots, and a trap on EXIT that stops
# everything this script started, by PID.
#
# Environment: PORT (corral's port; default a free one), KEEP=1 keeps the work folder
# (logs, state) instead of removing it (it is also kept when the script fails).

demo="fleet-${demo:-demo}"
here="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
source "$here/../demo-lib.sh"

start_corral() { # corral serve on loopback, no Docker, no mDNS, our admin token
    step "starting corral serve on $url (home $work/corral)"
    CORRAL_BOOTSTRAP_TOKEN="$admin" CORRAL_LOCAL_DOCKER_URL="" CORRAL_MDNS_ENABLED=false \
        "$bin/corral" serve --bind 127.0.0.1 --port "$port" --home "$work/corral" \
        >"$work/serve.log" 2>&1 &
    pids+=("$!")
    serve_pid=$!
    wait_for 60 "corral to answer on $url" curl -sf "$url/healthz"
    echo "corral is up (pid $serve_pid, log $work/serve.log)"
}

push_map() { # push_map FILE: corral map push FILE
    step "pushing the map: corral map push $(basename "$1")"
    corral map push "$1"
    corral map ls
}

start_robots() { # start_robots MAP_FILE N MARKER,MARKER,...: `corral sim robots` in the background
    local map_file=$1 n=$2 starts=$3
    step "starting $n virtual robots sim-1..sim-$n on $starts (corral sim robots, --speed 2)"
    # "$bin/corral" itself, not the `corral` function: $! must be the simulator's own PID
    CORRAL_URL="$url" CORRAL_TOKEN="$admin" "$bin/corral" sim robots --n "$n" \
        --map "$map_file" --start-markers "$starts" --speed 2 --seed 7 >"$work/sim.log" 2>&1 &
    pids+=("$!")
    sim_pid=$!
    echo "simulator pid $sim_pid, log $work/sim.log"
}

all_online() { # all_online N: `corral robot ls` shows sim-1..sim-N online
    corral --json robot ls | "$bin/python" -c '
import json, sys
state = {r["name"]: r["state"] for r in json.load(sys.stdin)}
sys.exit(not all(state.get(f"sim-{i}") == "online" for i in range(1, int(sys.argv[1]) + 1)))
' "$1"
}

wait_online() { # wait_online N
    step "waiting until corral robot ls shows the $1 robots online"
    if ! wait_for 60 "$1 robots online" all_online "$1"; then
        corral robot ls
        tail -n 20 "$work/sim.log"
        return 1
    fi
    corral robot ls
}

# A line about the missions and the traffic, from `corral --json mission ls` and the map's
# reservation table (GET /fleet/maps/MAP/traffic, as `corral map traffic MAP` shows it):
# its first word is done, running or failed.
progress_py='
import json, sys
missions = json.loads(sys.argv[1])
waits = json.loads(sys.argv[2]).get("waits", {})
done = [m for m in missions if m["state"] == "done"]
bad = [m for m in missions if m["state"] not in ("active", "done")]
if bad:
    print("failed " + "; ".join(
        "mission %s (%s to %s) %s: %s" % (m["id"], m["robot"], m["goal"], m["state"], m["reason"])
        for m in bad))
    sys.exit()
line = "%s %d/%d done" % ("done" if len(done) == len(missions) else "running", len(done), len(missions))
at = ["%s %s" % (m["robot"], m["at"]) for m in sorted(missions, key=lambda m: m["robot"])
      if m["state"] == "active"]
if at:
    line += "; at " + ", ".join(at)
if waits:
    line += "; waiting: " + ", ".join(
        "%s for %s (held by %s)" % (robot, w["marker"], w["holder"]) for robot, w in waits.items())
print(line)
'

follow_missions() { # follow_missions MAP LIMIT: until every mission is done, or fail
    local map=$1 limit=$2
    step "following corral mission ls until every mission is done (limit $limit s)"
    local deadline=$((SECONDS + limit)) line="" last=""
    while :; do
        line=$("$bin/python" -c "$progress_py" "$(corral --json mission ls)" "$(
            curl -sf -H "Authorization: Bearer $admin" "$url/fleet/maps/$map/traffic"
        )")
        if [[ "$line" != "$last" ]]; then
            printf '  [%3ds] %s\n' "$SECONDS" "${line#* }"
            last=$line
        fi
        case "$line" in
        done*) break ;;
        failed*)
            echo "FAILED: ${line#failed }" >&2
            corral mission ls
            return 1
            ;;
        esac
        if ((SECONDS >= deadline)); then
            echo "FAILED: the missions did not all finish within $limit s" >&2
            corral mission ls
            echo "traffic on map $map:"
            corral map traffic "$map"
            echo "the simulator's last lines:"
            tail -n 20 "$work/sim.log"
            return 1
        fi
        sleep 0.3
    done
    corral mission ls
}

show_events() { # the traffic.* and mission.* events, oldest first (also kept in $events)
    step "events: traffic.* and mission.* (corral events)"
    local all
    all=$(corral events -n 1000)
    events=$(grep -E '^\S+ \S+  (traffic|mission)\.' <<<"$all" || true)
    echo "$events"
    if ! grep -q '  traffic\.' <<<"$events"; then
        echo "(no traffic.* event this time: no deadlock, the robots only waited for one another)"
    fi
}

estop_all() { # estop_all N: `corral fleet estop` and wait until the N robots obeyed it
    local n=$1
    step "emergency stop for the whole fleet: corral fleet estop"
    corral fleet estop
    local deadline=$((SECONDS + 15))
    until (($(grep -cE ' sim-[0-9]+ estop$' "$work/sim.log") >= n)); do
        if ((SECONDS >= deadline)); then
            echo "FAILED: only $(grep -cE ' sim-[0-9]+ estop$' "$work/sim.log") of $n robots reported the estop" >&2
            return 1
        fi
        sleep 0.2
    done
    echo "what the robots said (corral sim robots):"
    grep -E ' sim-[0-9]+ estop$' "$work/sim.log" | sed 's/^/  /'
}

stop_robots() { # stop the simulator (SIGTERM) and print its summary table
    step "stopping the simulator; its summary"
    kill -TERM "$sim_pid"
    wait "$sim_pid" || true
    sed -n '/ROBOT/,$p' "$work/sim.log"
    if grep -E ' told to leave ' "$work/sim.log"; then
        echo "FAILED: corral told a robot to leave a marker it was not on (above)" >&2
        return 1
    fi
}
