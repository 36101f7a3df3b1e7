#!/usr/bin/env bash
# A head-on deadlock broken by corral, end to end on this machine: corral serves on
# loopback, the corridor map (corridor.yml: A-B-C-D in a line, a siding S linked to B and
# C) is pushed, two virtual robots stand on B and C, and are sent to D and A. Each needs
# the marker the other stands on: corral finds the cycle at once and re-routes the robot
# of lower priority (sim-1) through the siding (event traffic.rerouted), the other passes,
# and both arrive. Everything started here listens on 127.0.0.1 and is stopped by PID.
#
# Environment: PORT (corral's port; default a free one), TIMEOUT (seconds for the missions;
# default 60), KEEP=1 keeps the work folder.
set -euo pipefail
demo=deadlock
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

timeout=${TIMEOUT:-60}

start_corral
push_map "$here/corridor.yml"
start_robots "$here/corridor.yml" 2 B,C
wait_online 2

step "head-on: sim-1 (on B) to D, sim-2 (on C) to A"
corral mission new sim-1 D --objective "deliver at D"
corral mission new sim-2 A --objective "deliver at A"

follow_missions corridor "$timeout"
show_events
if ! grep -q '  traffic\.rerouted ' <<<"$events"; then
    echo "FAILED: no traffic.rerouted event: the deadlock was not broken by a re-route" >&2
    exit 1
fi

step "the routes they took: corral --json mission ls"
corral --json mission ls | "$bin/python" -c '
import json, sys
for m in sorted(json.load(sys.stdin), key=lambda m: m["robot"]):
    print("  %s: %s (%s)" % (m["robot"], " > ".join(m["route"]), m["state"]))'

step "where the robots are now: corral robot ls"
corral robot ls

stop_robots
step "done: the deadlock was broken through the siding; stopping corral"
