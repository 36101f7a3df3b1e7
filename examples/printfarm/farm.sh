#!/usr/bin/env bash
# The example farm's layout, through the CLI (CORRAL_URL and CORRAL_TOKEN set).
set -euo pipefail
corral=${CORRAL:-.venv/bin/corral}
$corral farm rack near --position 0 --slots 10
$corral farm rack far --position 30 --slots 10
for i in 1 2 3 4 5 6 7 8; do $corral farm bed "clean-$i" --type pei --rack near --slot "$i"; done
for i in 1 2 3 4; do $corral farm bed "glass-$i" --type glass --rack far --slot "$i"; done
for i in 1 2 3 4 5 6; do
  type=pei; [ "$i" -gt 4 ] && type=glass
  $corral farm bed "in-p$i" --type "$type" --state with_part
  $corral farm printer "p$i" --bed-type "$type" --door "door-$i" --position "$((i * 5))" --bed "in-p$i"
done
$corral farm printers
