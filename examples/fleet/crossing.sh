#!/usr/bin/env bash
# The crossing scenario end to end on this machine: corral serves on loopback, the 6x6 grid
# (grid.yml) is pushed, virtual robots (`corral sim robots`) start on the four edges of the
# grid and each is sent to the opposite edge, so their routes cross in the middle. corral
# reserves each robot's next marker and lane before it moves, makes robots wait for one
# another and breaks head-on deadlocks; the script follows the missions until all are done,
# prints the traffic and mission events and where the robots ended, then sends an emergency
# stop to the whole fleet and checks every robot got it. Everything started here listens
# on 127.0.0.1 and is stopped by PID on exit.
#
# Environment: PORT (corral's port; default a free one), ROBOTS (1 to 8; default 8),
# TIMEOUT (seconds for the missions; default 120), KEEP=1 keeps the work folder.
set -euo pipefail
robots=${ROBOTS:-8}
timeout=${TIMEOUT:-120}
if ! [[ "$robots" =~ ^[0-9]+$ ]] || ((robots < 1 || robots > 8)); then
    echo "ROBOTS must be 1 to 8, not $robots" >&2
    exit 2
fi
demo=crossing
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

# Start markers on the edges, not the corners, taking the edges in turn (north = row 0,
# west = column 0, south = row 5, east = column 5). Each robot goes straight across to the
# opposite edge: r0cX <-> r5cX, rRc0 <-> rRc5. Each inner row and column carries one robot,
# so every north-south route crosses every west-east one, and no route passes another
# robot's start or goal. Robots wait for one another at the crossings, but the directions
# are chosen so that no ring of robots each waiting for the next (a deadlock) can form:
# rows 1-2 go east and rows 3-4 west, columns 1-2 go south and columns 3-4 north, and a
# ring would need a southward column to the right of a northward one, or a westward row
# above an eastward one. (deadlock.sh shows corral breaking a deadlock.)
edge_markers=(r0c1 r1c0 r5c3 r3c5 r0c2 r2c0 r5c4 r4c5)
starts=("${edge_markers[@]:0:robots}")
opposite() { # the marker straight across the grid from an edge marker
    case "$1" in
    r0c*) echo "r5c${1:3}" ;; r5c*) echo "r0c${1:3}" ;;
    r*c0) echo "${1%c0}c5" ;; r*c5) echo "${1%c5}c0" ;;
    esac
}
edge() { # the edge a marker is on
    case "$1" in
    r0c*) echo north ;; r5c*) echo south ;; r*c0) echo west ;; r*c5) echo east ;;
    esac
}

start_corral

push_map "$here/grid.yml"

start_robots "$here/grid.yml" "$robots" "$(
    IFS=,
    echo "${starts[*]}"
)"
wait_online "$robots"

step "one mission per robot, to the opposite edge: corral mission new sim-i MARKER (all at once)"
mission_pids=()
for i in $(seq 1 "$robots"); do
    start=${starts[i - 1]}
    goal=$(opposite "$start")
    corral mission new "sim-$i" "$goal" \
        --objective "cross from the $(edge "$start") edge to the $(edge "$goal") edge" \
        >"$work/mission-$i.out" 2>&1 &
    mission_pids+=("$!")
done
failed=0
for i in $(seq 1 "$robots"); do
    wait "${mission_pids[i - 1]}" || failed=1
    cat "$work/mission-$i.out"
done
if ((failed)); then
    echo "FAILED: a mission was refused (above)" >&2
    exit 1
fi

follow_missions grid "$timeout"
show_events

step "where the robots are now: corral robot ls"
corral robot ls

estop_all "$robots"
stop_robots

step "done: every robot crossed the grid; stopping corral"
