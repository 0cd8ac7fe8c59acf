#!/usr/bin/env bash
# Runs one testbed scenario on fresh 4-node fleets and writes testbed/results/NAME.json
# (with "pass" and "message"); exit 0 when the scenario's pass condition holds.
#
#   testbed/run.sh NAME     NAME: baseline hetero latency kill pause throttle partition churn
#
# Each fleet gets its own compose project and subnet and is ALWAYS torn down (success,
# failure, Ctrl-C); its container logs are kept as results/NAME[-LABEL].log.
#
# Tunables (environment):
#   SHOAL_IMAGE      image (shoal:latest; build it with testbed/build.sh)
#   HEALTH_TIMEOUT   seconds to wait for GET /health = 200 (300)
#   RUNS, MAX_TOKENS greedy requests per measurement and their length (baseline 3, else 5; 64)
#   PROMPT           completion prompt (lib/client.py has the default)
#   LATENCY_DELAYS   one-way delays in ms for `latency` ("0 2 10")
#   PLACEMENT        --placement for latency (planned) and the fault scenarios (even)
#   TB_STATIC_PEER   1 (default): nodes 2-4 also get SHOAL_PEERS=node1; 0: mDNS only, which
#                    fails on this host (see README: internal networks drop multicast)
set -euo pipefail

cd "$(dirname "$0")"
TESTBED=$PWD
RESULTS=$TESTBED/results
SCENARIOS="baseline hetero latency kill pause throttle partition churn"

usage() {
    echo "usage: $0 NAME   (one of: $SCENARIOS)" >&2
    exit 2
}
[ $# -eq 1 ] || usage
NAME=$1
case " $SCENARIOS " in *" $NAME "*) ;; *) usage ;; esac

for tool in docker curl jq python3 bc; do
    command -v "$tool" >/dev/null 2>&1 || { echo "run.sh: needs $tool" >&2; exit 1; }
done
export SHOAL_IMAGE=${SHOAL_IMAGE:-shoal:latest}
docker image inspect "$SHOAL_IMAGE" >/dev/null 2>&1 \
    || { echo "run.sh: no image $SHOAL_IMAGE; run testbed/build.sh first" >&2; exit 1; }

# shellcheck source=lib/fleet.sh
. "$TESTBED/lib/fleet.sh"
# shellcheck source=lib/perf.sh
. "$TESTBED/lib/perf.sh"
# shellcheck source=lib/faults.sh
. "$TESTBED/lib/faults.sh"

# Writes the scenario's JSON (stdin) to results/NAME.json with run metadata added.
write_result() {
    mkdir -p "$RESULTS"
    jq --arg name "$NAME" --arg image "$SHOAL_IMAGE" \
        --arg image_id "$(docker image inspect -f '{{.Id}}' "$SHOAL_IMAGE")" \
        --arg commit "$(git -C "$TESTBED" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        '{scenario: $name, image: $image, image_id: $image_id, commit: $commit, date: $date,
          pass: null, message: null} + .' >"$RESULTS/$NAME.json"
    log "wrote results/$NAME.json"
}

# Records the verdict in results/NAME.json (written before) and exits.
verdict() {
    local ok=$1 msg=$2 f="$RESULTS/$NAME.json"
    if [ -f "$f" ]; then
        jq --argjson ok "$ok" --arg m "$msg" '.pass = $ok | .message = $m' "$f" >"$f.tmp" && mv "$f.tmp" "$f"
    fi
    if [ "$ok" = true ]; then log "PASS $NAME: $msg"; exit 0; fi
    log "FAIL $NAME: $msg"
    exit 1
}
pass() { verdict true "$1"; }
fail() { verdict false "$1"; }

"scenario_$NAME"
