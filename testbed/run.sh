#!/usr/bin/env bash
# Runs one testbed scenario against a fresh 4-node fleet and writes testbed/results/NAME.json.
#
#   testbed/run.sh NAME        NAME: baseline | hetero latency kill pause throttle partition churn
#
# Each run gets its own compose project and subnet, so runs never share state, and the
# fleet is ALWAYS torn down on exit (success, failure or Ctrl-C). Container logs are kept
# next to the result as testbed/results/NAME.log.
#
# Tunables (environment):
#   SHOAL_IMAGE       image (shoal:latest; build it with testbed/build.sh)
#   HEALTH_TIMEOUT    seconds to wait for node 1's GET /health to return 200 (300)
#   BASELINE_RUNS     generations in the baseline scenario (3)
#   MAX_TOKENS        tokens per generation (64)
#   PROMPT            completion prompt
set -euo pipefail

cd "$(dirname "$0")"
TESTBED=$PWD
RESULTS=$TESTBED/results
SCENARIOS="baseline hetero latency kill pause throttle partition churn"

die() {
    echo "run.sh: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 NAME   (one of: $SCENARIOS)" >&2
    exit 2
}

[ $# -eq 1 ] || usage
NAME=$1
case " $SCENARIOS " in
*" $NAME "*) ;;
*) usage ;;
esac

for tool in docker curl jq; do
    command -v "$tool" >/dev/null 2>&1 || die "needs $tool"
done
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    die "needs docker compose (plugin) or docker-compose"
fi

export SHOAL_IMAGE=${SHOAL_IMAGE:-shoal:latest}
docker image inspect "$SHOAL_IMAGE" >/dev/null 2>&1 || die "no image $SHOAL_IMAGE; run testbed/build.sh first"
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-300}

# Lower-case letters, digits and dashes only: compose's rules for project names.
PROJECT="shoaltb-$(echo "$NAME" | tr -c 'a-z0-9\n' '-')-$(date +%s)-$$"

# A /24 no other docker network uses, so parallel runs (and stale leftovers) never clash.
pick_subnet() {
    local used third
    used=$(docker network inspect $(docker network ls -q) \
        -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null || true)
    for _ in $(seq 1 50); do
        third=$((RANDOM % 254 + 1))
        case "$used" in
        *"172.29.$third.0/24"*) ;;
        *)
            echo "172.29.$third"
            return
            ;;
        esac
    done
    die "no free 172.29.x.0/24 subnet"
}
export SHOAL_SUBNET_PREFIX=${SHOAL_SUBNET_PREFIX:-$(pick_subnet)}
# Node 1's API on the internal bridge (fixed address in docker-compose.yml). The host
# reaches it over the local bridge; docker cannot publish ports of an internal network.
API="http://$SHOAL_SUBNET_PREFIX.11:8080"

compose() {
    "${COMPOSE[@]}" -p "$PROJECT" -f "$TESTBED/docker-compose.yml" "$@"
}

FLEET_STARTED=0
teardown() {
    local rc=$?
    trap - EXIT INT TERM
    [ "$FLEET_STARTED" = 1 ] || exit "$rc"
    mkdir -p "$RESULTS"
    compose logs --no-color >"$RESULTS/$NAME.log" 2>&1 || true
    compose down -v --remove-orphans >/dev/null 2>&1 || echo "run.sh: teardown of $PROJECT failed; clean up with: ${COMPOSE[*]} -p $PROJECT down -v --remove-orphans" >&2
    echo "run.sh: $NAME finished (exit $rc); fleet $PROJECT removed; logs in results/$NAME.log" >&2
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT)) code
    echo "run.sh: waiting up to ${HEALTH_TIMEOUT}s for $API/health" >&2
    while [ $SECONDS -lt $deadline ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 "$API/health" || true)
        [ "$code" = 200 ] && return 0
        # Fail fast when node 1 is gone instead of waiting out the timeout.
        if [ -z "$(compose ps -q node1 2>/dev/null)" ] \
            || [ "$(docker inspect -f '{{.State.Running}}' "$(compose ps -q node1)")" != true ]; then
            compose logs --no-color --tail 20 node1 >&2 || true
            die "node1 exited before becoming healthy"
        fi
        sleep 2
    done
    die "node1 not healthy after ${HEALTH_TIMEOUT}s (last status ${code:-none})"
}

# Writes the scenario's JSON (given on stdin) to results/NAME.json with run metadata added.
write_result() {
    mkdir -p "$RESULTS"
    jq --arg name "$NAME" --arg project "$PROJECT" --arg image "$SHOAL_IMAGE" \
        --arg image_id "$(docker image inspect -f '{{.Id}}' "$SHOAL_IMAGE")" \
        --arg commit "$(git -C "$TESTBED" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        '{scenario: $name, project: $project, image: $image, image_id: $image_id,
          commit: $commit, date: $date} + .' >"$RESULTS/$NAME.json"
    echo "run.sh: wrote results/$NAME.json" >&2
}

# --- scenarios -------------------------------------------------------------------------

# Greedy completions through node 1's OpenAI-compatible API: tokens, wall time and
# end-to-end tok/s (prefill included) per run, plus the cluster view the fleet served with.
scenario_baseline() {
    local runs=${BASELINE_RUNS:-3} max_tokens=${MAX_TOKENS:-64}
    local prompt=${PROMPT:-"The three most useful things to know about running language models on small devices are"}
    local request results="[]" out body seconds
    request=$(jq -n --arg p "$prompt" --argjson n "$max_tokens" \
        '{prompt: $p, max_tokens: $n, temperature: 0, seed: 1}')
    for i in $(seq 1 "$runs"); do
        out=$(curl -sS -m 600 -w '\n%{http_code} %{time_total}' -H 'content-type: application/json' \
            -d "$request" "$API/v1/completions") || die "completion request $i failed"
        body=$(sed '$d' <<<"$out")
        read -r code seconds <<<"$(tail -n 1 <<<"$out")"
        [ "$code" = 200 ] || die "completion $i: HTTP $code: $body"
        results=$(jq --argjson r "$body" --argjson s "$seconds" --argjson i "$i" '. + [{
            run: $i,
            seconds: $s,
            prompt_tokens: $r.usage.prompt_tokens,
            completion_tokens: $r.usage.completion_tokens,
            tokens_per_s: (if $s > 0 then $r.usage.completion_tokens / $s else null end),
            finish_reason: $r.choices[0].finish_reason,
            text: $r.choices[0].text
        }]' <<<"$results")
        echo "run.sh: baseline run $i: $(jq -r '.[-1] | "\(.completion_tokens) tokens in \(.seconds)s = \(.tokens_per_s) tok/s"' <<<"$results")" >&2
    done
    local cluster
    cluster=$(curl -sS -m 10 "$API/v1/cluster" || true)
    jq -e . >/dev/null 2>&1 <<<"$cluster" || cluster=null
    jq -n --argjson runs "$results" --argjson cluster "$cluster" \
        --arg prompt "$prompt" --argjson max_tokens "$max_tokens" '{
            prompt: $prompt, max_tokens: $max_tokens, runs: $runs,
            median_tokens_per_s: ($runs | map(.tokens_per_s) | sort | .[(length - 1) / 2 | floor]),
            cluster: $cluster
        }' | write_result
}

not_implemented() {
    die "scenario '$NAME' is not implemented yet ($1)"
}

# Nodes of different speed: does the plan give the 0.25-CPU node fewer layers, and how
# close is throughput to the fleet's sum?
scenario_hetero() { not_implemented "compare per-node layer shares and tok/s against baseline"; }
# Link emulation (SHOAL_LINK_EMULATION=delay=...,jitter=...) on every node via an override
# file: tok/s and latency versus one-way delay.
scenario_latency() { not_implemented "sweep SHOAL_LINK_EMULATION delay/jitter/rate, record tok/s"; }
# docker kill a middle stage mid-generation: error surfaced, replan, time to recover.
scenario_kill() { not_implemented "kill a stage during generation, measure recovery"; }
# docker pause a stage (a hung device): idle timeout detection and replan.
scenario_pause() { not_implemented "pause a stage, measure detection and recovery"; }
# docker update --cpus on a node mid-run: does the scheduler notice and rebalance?
scenario_throttle() { not_implemented "throttle a node's CPU quota mid-run"; }
# Cut a node off the fleet network (docker network disconnect), then reconnect.
scenario_partition() { not_implemented "disconnect and reconnect a node's network"; }
# Nodes leaving and joining repeatedly under load.
scenario_churn() { not_implemented "repeated stop/start of nodes under load"; }

# --- main ------------------------------------------------------------------------------

# Unimplemented scenarios stop here, before a fleet is started for nothing.
case "$NAME" in
baseline) ;;
*) "scenario_$NAME" ;;
esac

echo "run.sh: starting fleet $PROJECT on $SHOAL_SUBNET_PREFIX.0/24" >&2
FLEET_STARTED=1
compose up -d
wait_healthy
"scenario_$NAME"
