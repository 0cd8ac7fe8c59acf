#!/usr/bin/env bash
# Runs one testbed scenario on fresh 4-node fleets and writes testbed/results/NAME.json
# (with "pass" and "message"); exit 0 when the scenario's pass condition holds.
#
#   testbed/run.sh NAME     NAME: baseline hetero latency links kill seeder pause throttle
#                                 partition churn smoke
#
# Besides NAME.json it writes NAME-timeline.json (cluster views, stage metrics, token times
# and fault marks sampled during the run) and NAME.png (tok/s over time with the faults,
# per-stage decode latency, placement per plan epoch), drawn by lib/plot.py with matplotlib
# from a venv in testbed/.venv that the first run creates (pip, from PyPI). A plot that
# cannot be drawn is a warning in the log and in the JSON, never the scenario's verdict.
#
# Each fleet gets its own compose project and subnet and is ALWAYS torn down (success,
# failure, Ctrl-C); its container logs are kept as results/NAME[-LABEL].log.
#
# Tunables (environment):
#   SHOAL_IMAGE      image (shoal:latest; testbed/build.sh builds it, run.sh does when absent)
#   HEALTH_TIMEOUT   seconds to wait for GET /health = 200 (300)
#   RUNS, MAX_TOKENS greedy requests per measurement and their length (baseline 3, else 5; 64)
#   PROMPT           completion prompt (lib/client.py has the default)
#   LATENCY_DELAYS   one-way delays in ms for `latency` ("0 2 10")
#   LINK_DELAY       one-way delay in ms of the slow pair in `links` (15)
#   LINK_MEMORY      --memory of every node in `links` (80MiB: no node holds the model)
#   PLACEMENT        --placement for latency (planned) and the fault scenarios (even)
#   TB_STATIC_PEER   0 (default): nodes find each other by mDNS only (run.sh opens the
#                    bridge to mDNS multicast with an iptables rule, removed at teardown;
#                    without iptables it falls back to 1); 1: nodes 2-4 also get
#                    SHOAL_PEERS=node1
set -euo pipefail

cd "$(dirname "$0")"
TESTBED=$PWD
RESULTS=$TESTBED/results
SCENARIOS="baseline hetero latency links kill seeder pause throttle partition churn smoke"

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
# A fresh clone has neither the image nor the model: make them (once) rather than fail.
if ! docker image inspect "$SHOAL_IMAGE" >/dev/null 2>&1; then
    echo "run.sh: no image $SHOAL_IMAGE yet; building it with testbed/build.sh (about 10 min cold)" >&2
    SHOAL_IMAGE=$SHOAL_IMAGE "$TESTBED/build.sh" x86_64 >&2 \
        || { echo "run.sh: testbed/build.sh failed" >&2; exit 1; }
fi
if [ -z "${SHOAL_MODELS_DIR:-}" ] && [ ! -f "$TESTBED/../models/${SHOAL_MODEL_FILE:-SmolLM2-135M-Instruct.Q4_1.gguf}" ]; then
    echo "run.sh: fetching the default model into models/ (scripts/fetch-models smollm2)" >&2
    "$TESTBED/../scripts/fetch-models" smollm2 >&2 \
        || { echo "run.sh: could not fetch the model" >&2; exit 1; }
fi

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

# testbed/.venv with matplotlib (created on first use); prints its python, or fails.
plot_python() {
    local venv=$TESTBED/.venv
    if ! "$venv/bin/python" -c 'import matplotlib' >/dev/null 2>&1; then
        log "setting up $venv with matplotlib (pip, once)"
        python3 -m venv "$venv" >&2 \
            && "$venv/bin/pip" install -q --disable-pip-version-check 'matplotlib>=3.5,<4' >&2 \
            || return 1
    fi
    echo "$venv/bin/python"
}

# results/NAME-timeline.json from the recording, then results/NAME.png; returns 1 (and says
# why) when the plot could not be drawn.
plot_results() {
    local tl="$RESULTS/$NAME-timeline.json" py
    jq -n --slurpfile ev <(cat "$REC/events.jsonl" 2>/dev/null) \
        --slurpfile cl <(cat "$REC/cluster.jsonl" 2>/dev/null) \
        --slurpfile me <(cat "$REC/metrics.jsonl" 2>/dev/null) \
        --slurpfile tk <(cat "$REC/tokens.jsonl" 2>/dev/null) \
        '{events: $ev, cluster: $cl, metrics: $me, tokens: $tk}' >"$tl" || return 1
    py=$(plot_python) || { log "plot: could not set up matplotlib"; return 1; }
    "$py" "$TESTBED/lib/plot.py" "$RESULTS/$NAME.json" "$tl" "$RESULTS/$NAME.png" >&2 || return 1
    log "wrote results/$NAME.png"
}

# Records the verdict in results/NAME.json (written before), draws the plots and exits.
verdict() {
    local ok=$1 msg=$2 f="$RESULTS/$NAME.json" plot
    if [ -f "$f" ]; then
        jq --argjson ok "$ok" --arg m "$msg" '.pass = $ok | .message = $m' "$f" >"$f.tmp" && mv "$f.tmp" "$f"
        plot=$(plot_results && echo ok || echo "failed (see the log)")
        [ "$plot" = ok ] || log "WARNING: no plot for $NAME"
        jq --arg p "$plot" '.plot = $p' "$f" >"$f.tmp" && mv "$f.tmp" "$f"
    fi
    if [ "$ok" = true ]; then log "PASS $NAME: $msg"; exit 0; fi
    log "FAIL $NAME: $msg"
    exit 1
}
pass() { verdict true "$1"; }
fail() { verdict false "$1"; }

"scenario_$NAME"
