# Fault scenarios for run.sh (sourced): kill, seeder, pause, throttle, partition, churn, smoke.
# They run with --placement ${PLACEMENT:-even} so the pipeline has several stages and the
# node under fault is a stage other than the API node (node1 unless it holds the last stage).
# In-flight failover (issue 5) exists: a request running when its stage fails must complete.

fault_fleet() {
    ENV_ALL="SHOAL_PLACEMENT=${PLACEMENT:-even}"
    fleet_up "${1:-default}"
    # In a seeder fleet node1 is the only holder of the model: killing it would leave no one
    # to fetch the lost layers from, so the target is the last stage on another node.
    local k
    for k in -1 -2 -3 -4; do
        TARGET=$(stage_node 1 "$k")
        { [ "${FLEET_SEEDER:-0}" = 1 ] && [ "$TARGET" = 1 ]; } || break
    done
    [ -n "$TARGET" ] || die "could not find the node of the last stage: $(plan_summary 1)"
    API_NODE=1
    [ "$TARGET" = 1 ] && API_NODE=2
    log "fault target: node$TARGET (last stage); requests via node$API_NODE"
}

# stream_bg MAX_TOKENS: starts a greedy streaming completion on the API node in the
# background; STREAM_PID, STREAM_OUT, STREAM_PROGRESS.
stream_bg() {
    STREAM_OUT=$WORKDIR/stream.json STREAM_PROGRESS=$WORKDIR/progress
    echo 0 >"$STREAM_PROGRESS"
    python3 "$TESTBED/lib/client.py" stream "$(api_url "$API_NODE")" --max-tokens "$1" \
        --progress "$STREAM_PROGRESS" ${PROMPT:+--prompt "$PROMPT"} >"$STREAM_OUT" &
    STREAM_PID=$!
}

# Waits until the background stream has N chunks (or ended); 1 if it never got there.
wait_progress() {
    local n=$1 t0=$SECONDS
    while [ $((SECONDS - t0)) -lt 120 ]; do
        [ "$(cat "$STREAM_PROGRESS")" -ge "$n" ] 2>/dev/null && return 0
        kill -0 "$STREAM_PID" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# One greedy request of LONG tokens on the API node: its text (JSON string) or null.
greedy_text() {
    python3 "$TESTBED/lib/client.py" stream "$(api_url "$API_NODE")" --max-tokens "$LONG" \
        ${PROMPT:+--prompt "$PROMPT"} | jq -c 'if .completed then .text else null end'
}

FAULT_AT_ENV=${FAULT_AT:-}
LONG=${MAX_TOKENS:-200}
FAULT_AT=${FAULT_AT:-40}

# docker kill the last stage's node mid-generation.
scenario_kill() {
    fault_fleet
    local ref epoch t0 recovery inflight after c at_kill
    ref=$(greedy_text)
    epoch=$(plan_epoch "$API_NODE")
    # Looked up before the stream starts: `compose ps` takes long enough for a short
    # stream to finish before the kill (smoke's first run killed after the last token).
    c=$(container "$TARGET")
    stream_bg "$LONG"
    wait_progress "$FAULT_AT" || log "stream ended before $FAULT_AT chunks"
    t0=$(now)
    docker kill "$c" >/dev/null
    # Read after the kill returned: at most this many chunks came before it.
    at_kill=$(cat "$STREAM_PROGRESS")
    event fault "docker kill node$TARGET"
    log "killed node$TARGET after $at_kill chunks"
    recovery=$(wait_new_plan "$API_NODE" 120 "$epoch" "$t0")
    wait "$STREAM_PID" || true
    inflight=$(cat "$STREAM_OUT")
    after=$(greedy_text)
    jq -n --argjson ref "$ref" --argjson inflight "$inflight" --argjson after "$after" \
        --argjson rec "$recovery" --argjson target "$TARGET" --argjson api "$API_NODE" \
        --argjson fault_at "$FAULT_AT" --argjson at_kill "$at_kill" --argjson long "$LONG" \
        --argjson plan "$(plan_json "$API_NODE")" --argjson ready "$FLEET_READY_S" \
        --argjson seeder "$(seeder_json "$ref")" '{
        target: "node\($target)", api_node: "node\($api)", max_tokens: $long,
        fleet_ready_s: $ready, fault_at: $fault_at, chunks_before_kill: $at_kill,
        reference_text: $ref,
        inflight: ($inflight | del(.text) + {text_matches_reference: ($inflight.text == $ref)}),
        recovery_s: $rec, plan_after: $plan,
        after_text_identical: ($after != null and $after == $ref)}
        + if $seeder == null then {} else {seeder: $seeder} end' | write_result
    local f=$RESULTS/$NAME.json
    [ "$ref" != null ] || fail "the fault-free request failed"
    jq -e '.seeder == null or .seeder.text_matches_local_fleet' "$f" >/dev/null \
        || fail "the fleet that fetched its weights from node1 generated other text than the fleet with the model on every node"
    jq -e '.recovery_s != null' "$f" >/dev/null || fail "no healthy new plan within 120 s of the kill"
    jq -e '.after_text_identical' "$f" >/dev/null || fail "after recovery the greedy output differs from the fault-free run"
    jq -e '.inflight.completed' "$f" >/dev/null \
        || fail "in-flight request lost ($(jq -r .inflight.error "$f")); recovered in $recovery s with identical output"
    jq -e '.inflight.text_matches_reference' "$f" >/dev/null || fail "in-flight request completed with different text"
    jq -e '.chunks_before_kill < .inflight.chunks' "$f" >/dev/null \
        || fail "the kill came after the stream's last chunk ($at_kill of $(jq -r .inflight.chunks "$f")): nothing was tested"
    pass "killed after $at_kill of $(jq -r .inflight.chunks "$f") chunks; in-flight request completed with identical text; recovered in $(printf %.2f "$recovery") s; new request identical"
}

# Seeder variant of kill. A fleet with the model on every node gives the reference text; a
# fleet where only node1 has the file (docker-compose.seeder.yml: the others fetch their
# layers from it, checked chunk by chunk) must generate the same text, then lose a fetching
# stage mid-generation like `kill`: the survivors fetch its layers from node1 while the
# in-flight request waits, and it completes with the same text.
scenario_seeder() {
    fault_fleet local
    SEEDER_REF=$(greedy_text)
    LOCAL_READY_S=$FLEET_READY_S
    fleet_down
    [ "$SEEDER_REF" != null ] || die "the fleet with the model on every node failed a request"
    FLEET_SEEDER=1
    scenario_kill
}

# In a seeder fleet: the comparison with the local fleet and every weight fetch the living
# nodes report (their /v1/cluster events); null otherwise.
seeder_json() {
    if [ "${FLEET_SEEDER:-0}" != 1 ]; then
        echo null
        return
    fi
    local i fetches=""
    for i in ${FLEET_NODES:-1 2 3 4}; do
        [ "$i" = "$TARGET" ] && continue
        fetches+=$(cluster_json "$i" | jq -c --arg n "node$i" \
            '[.events[]? | select(.what | startswith("fetched")) | {node: $n, at_unix_ms, what}]' \
            2>/dev/null || echo '[]')
    done
    jq -n --arg ref "$1" --arg local "$SEEDER_REF" --argjson lr "$LOCAL_READY_S" \
        --argjson sr "$FLEET_READY_S" --argjson f "$(jq -s 'add // []' <<<"$fetches")" '{
        holder: "node1", local_fleet_ready_s: $lr, seeder_fleet_ready_s: $sr,
        text_matches_local_fleet: ($ref == $local), fetches: $f,
        fetched_mb: ([$f[].what | capture("\\((?<mb>[0-9.]+) MB\\)").mb | tonumber] | add)}'
}

# docker pause the last stage's node for PAUSE_S (10) s mid-generation, then unpause.
scenario_pause() {
    fault_fleet
    local ref epoch t0 detect during after inflight rejoin c at_pause
    ref=$(greedy_text)
    epoch=$(plan_epoch "$API_NODE")
    c=$(container "$TARGET")
    stream_bg "$LONG"
    wait_progress "$FAULT_AT" || log "stream ended before $FAULT_AT chunks"
    t0=$(now)
    docker pause "$c" >/dev/null
    at_pause=$(cat "$STREAM_PROGRESS")
    event fault "docker pause node$TARGET"
    log "paused node$TARGET"
    detect=$(wait_new_plan "$API_NODE" "${PAUSE_S:-10}" "$epoch" "$t0")
    during=null
    [ "$detect" != null ] && during=$(greedy_text)
    # Unpause PAUSE_S after the pause began.
    sleep "$(echo "x = ${PAUSE_S:-10} - ($(now) - $t0); if (x < 0) 0 else x" | bc)"
    docker unpause "$c" >/dev/null
    event restore "unpause node$TARGET"
    local t1
    t1=$(now)
    log "unpaused node$TARGET"
    wait "$STREAM_PID" || true
    inflight=$(cat "$STREAM_OUT")
    rejoin=$(wait_converged 60 "$t1")
    after=$(greedy_text)
    jq -n --argjson ref "$ref" --argjson inflight "$inflight" --argjson during "$during" \
        --argjson after "$after" --argjson detect "$detect" --argjson rejoin "$rejoin" \
        --argjson target "$TARGET" --argjson pause_s "${PAUSE_S:-10}" --argjson plan "$(plan_json "$API_NODE")" \
        --argjson api "$API_NODE" --argjson at "$at_pause" '{
        target: "node\($target)", api_node: "node\($api)", pause_s: $pause_s,
        chunks_before_pause: $at, reference_text: $ref,
        inflight: ($inflight | del(.text) + {text_matches_reference: ($inflight.text == $ref)}),
        replan_during_pause_s: $detect, during_text_identical: ($during != null and $during == $ref),
        converged_after_unpause_s: $rejoin, after_text_identical: ($after != null and $after == $ref),
        plan_after: $plan}' | write_result
    local f=$RESULTS/$NAME.json
    jq -e '.replan_during_pause_s != null' "$f" >/dev/null || fail "no replan around the paused node within the pause"
    jq -e '.during_text_identical' "$f" >/dev/null || fail "request during the pause failed or differed"
    jq -e '.converged_after_unpause_s != null' "$f" >/dev/null \
        || fail "the fleet did not agree on one plan with all nodes within 60 s of the unpause"
    jq -e '.after_text_identical' "$f" >/dev/null || fail "request after unpause failed or differed"
    jq -e '.inflight.completed and .inflight.text_matches_reference' "$f" >/dev/null \
        || fail "in-flight request lost or different ($(jq -r .inflight.error "$f")); replan in $detect s, converged ${rejoin} s after the unpause"
    jq -e '.chunks_before_pause < .inflight.chunks' "$f" >/dev/null \
        || fail "the pause came after the stream's last chunk: nothing was tested"
    pass "paused after $at_pause chunks; in-flight completed identical; replan $(printf %.2f "$detect") s into the pause; all nodes on one plan $(printf %.2f "$rejoin") s after the unpause; identical output during and after"
}

# Throttles the last stage's node (PLACEMENT planned) to THROTTLE_CPUS (0.1) of a CPU for
# THROTTLE_S (30) s while one client keeps requesting (the straggler policy judges stages by
# the step times of real requests, so an idle fleet gives it nothing to see), then restores
# it. The fleet's quotas are over a 4 ms CFS period, whose 1 ms minimum quota is a quarter
# CPU, so the throttle uses a 10 ms period (`docker update --cpu-period/--cpu-quota`; a
# container created with quota and period refuses `--cpus`).
scenario_throttle() {
    # Planned placement: under `even` the planner ignores costs, so the straggler policy's
    # rebalance (seen in the log) could never move a layer.
    local PLACEMENT=${PLACEMENT:-planned}
    fault_fleet
    local c cpus to=${THROTTLE_CPUS:-0.1} hold=${THROTTLE_S:-30} before during after epoch t0 replan load_pid
    local period quota
    c=$(container "$TARGET")
    read -r period quota <<<"$(docker inspect -f '{{.HostConfig.CpuPeriod}} {{.HostConfig.CpuQuota}}' "$c")"
    cpus=$(echo "scale=2; $quota / $period" | bc)
    before=$(bench "$API_NODE" 3 64)
    epoch=$(plan_epoch "$API_NODE")
    python3 "$TESTBED/lib/client.py" load "$(api_url "$API_NODE")" --clients 1 --seconds "$hold" \
        --max-tokens 64 ${PROMPT:+--prompt "$PROMPT"} >"$WORKDIR/load.json" &
    load_pid=$!
    sleep 2
    docker update --cpu-period 10000 --cpu-quota "$(echo "$to * 10000 / 1" | bc)" "$c" >/dev/null
    t0=$(now)
    event fault "node$TARGET throttled to $to CPU"
    log "node$TARGET throttled from $cpus to $to CPUs for $hold s under load"
    replan=$(wait_new_plan "$API_NODE" "$hold" "$epoch" "$t0")
    wait "$load_pid" || true
    during=$(bench "$API_NODE" 3 64)
    local plan_during
    plan_during=$(plan_json "$API_NODE")
    docker update --cpu-period "$period" --cpu-quota "$quota" "$c" >/dev/null
    event restore "node$TARGET back to $cpus CPU"
    log "node$TARGET restored to $cpus CPUs"
    after=$(bench "$API_NODE" 3 64)
    jq -n --argjson b "$before" --argjson d "$during" --argjson a "$after" --arg cpus "$cpus" \
        --argjson to "$to" --argjson hold "$hold" --argjson rep "$replan" \
        --slurpfile load "$WORKDIR/load.json" --argjson target "$TARGET" \
        --argjson pd "$plan_during" --argjson api "$API_NODE" '$load[0] as $l | {
        target: "node\($target)", api_node: "node\($api)", cpus: $cpus, throttled_cpus: $to,
        throttle_s: $hold, replan_after_throttle_s: $rep,
        before_tok_s: $b.median_decode_tok_s, during_tok_s: $d.median_decode_tok_s, after_tok_s: $a.median_decode_tok_s,
        load_while_throttled: {requests: $l.requests, failed: $l.failed, tokens_per_s: $l.tokens_per_s,
            wrong_texts: ([$l.results[] | select(.completed and .text != $b.text)] | length)},
        all_ok: ($b.ok and $d.ok and $a.ok and $l.failed == 0),
        identical_text: ($b.text == $d.text and $d.text == $a.text
            and ([$l.results[] | select(.completed and .text != $b.text)] | length) == 0),
        replanned_while_throttled: ($rep != null), plan_while_throttled: $pd}' | write_result
    local f=$RESULTS/$NAME.json
    jq -e '.all_ok and .identical_text' "$f" >/dev/null || fail "requests failed or differed under throttling"
    jq -e '.replanned_while_throttled' "$f" >/dev/null \
        || fail "no replan within $hold s of throttling node$TARGET to $to CPUs (decode $(jq -r '"\(.before_tok_s) -> \(.during_tok_s) -> \(.after_tok_s)"' "$f") tok/s)"
    pass "replanned $(printf %.1f "$replan") s after throttling node$TARGET to $to CPUs; decode $(jq -r '"\(.before_tok_s) -> \(.during_tok_s) -> \(.after_tok_s)"' "$f") tok/s; identical text"
}

# docker network disconnect the last stage's node, then reconnect it at its address.
scenario_partition() {
    fault_fleet
    local c net ip ref epoch t0 detect during t1 rejoin after
    c=$(container "$TARGET")
    net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$c")
    ip=$SHOAL_SUBNET_PREFIX.1$TARGET
    ref=$(greedy_text)
    epoch=$(plan_epoch "$API_NODE")
    t0=$(now)
    docker network disconnect "$net" "$c"
    event fault "disconnect node$TARGET"
    log "node$TARGET disconnected from $net"
    detect=$(wait_new_plan "$API_NODE" 60 "$epoch" "$t0")
    during=$(greedy_text)
    sleep "${PARTITION_S:-5}"
    t1=$(now)
    docker network connect --ip "$ip" "$net" "$c"
    event restore "reconnect node$TARGET"
    log "node$TARGET reconnected at $ip"
    rejoin=$(wait_converged 60 "$t1")
    after=$(greedy_text)
    local members
    members=$(cluster_json "$API_NODE" | jq '.members | length')
    jq -n --argjson ref "$ref" --argjson during "$during" --argjson after "$after" \
        --argjson detect "$detect" --argjson rejoin "$rejoin" --argjson target "$TARGET" \
        --argjson members "$members" --argjson plan "$(plan_json "$API_NODE")" --argjson api "$API_NODE" '{
        target: "node\($target)", api_node: "node\($api)", replan_after_disconnect_s: $detect,
        during_text_identical: ($during != null and $during == $ref),
        converged_after_reconnect_s: $rejoin, members_after: $members,
        after_text_identical: ($after != null and $after == $ref), plan_after: $plan}' | write_result
    local f=$RESULTS/$NAME.json
    jq -e '.replan_after_disconnect_s != null and .during_text_identical' "$f" >/dev/null \
        || fail "no working replan while node$TARGET was cut off"
    jq -e '.converged_after_reconnect_s != null and .members_after == 4' "$f" >/dev/null \
        || fail "node$TARGET did not rejoin (all nodes on one plan) within 60 s of reconnecting"
    jq -e '.after_text_identical' "$f" >/dev/null || fail "output after reconnect differs"
    pass "replan $(printf %.2f "$detect") s after the cut; all 4 nodes on one plan $(printf %.2f "$rejoin") s after the reconnect; identical output while cut off and after"
}

# Nodes 3 and 4 stopped and restarted while CHURN_CLIENTS clients keep requesting.
scenario_churn() {
    ENV_ALL="SHOAL_PLACEMENT=${PLACEMENT:-even}"
    fleet_up default
    API_NODE=1
    local ref load_pid
    LONG=64 ref=$(greedy_text)
    python3 "$TESTBED/lib/client.py" load "$(api_url 1)" --clients "${CHURN_CLIENTS:-3}" \
        --seconds "${CHURN_S:-60}" --max-tokens 64 ${PROMPT:+--prompt "$PROMPT"} >"$WORKDIR/load.json" &
    load_pid=$!
    local events='[]' t0=$SECONDS
    churn_step() {
        sleep "$1"
        docker "$2" "$(container "$3")" >/dev/null
        event "$([ "$2" = stop ] && echo fault || echo restore)" "docker $2 node$3"
        events=$(jq --argjson t $((SECONDS - t0)) --arg a "$2" --arg n "node$3" '. + [{t_s: $t, action: $a, node: $n}]' <<<"$events")
        log "churn: $2 node$3 at $((SECONDS - t0)) s"
    }
    churn_step 5 stop 4
    churn_step 8 start 4
    churn_step 8 stop 3
    churn_step 8 start 3
    wait "$load_pid" || true
    wait_healthy 1
    # Both restarted nodes are members again and everyone serves one plan (within 60 s).
    local converged members
    converged=$(wait_converged 60 "$(now)")
    members=$(cluster_json 1 | jq '.members | length' 2>/dev/null || echo 0)
    local after
    LONG=64 after=$(greedy_text)
    jq -n --slurpfile load "$WORKDIR/load.json" --argjson events "$events" --argjson ref "$ref" \
        --argjson after "$after" --argjson plan "$(plan_json 1)" --argjson members "$members" --argjson conv "$converged" '$load[0] as $l | {
        events: $events, members_after: $members, converged_after_load_s: $conv, requests: $l.requests, completed: $l.completed, failed: $l.failed,
        errors: $l.errors, tokens_per_s: $l.tokens_per_s,
        wrong_texts: ([$l.results[] | select(.completed and .text != $ref)] | length),
        after_text_identical: ($after != null and $after == $ref), plan_after: $plan,
        results: [$l.results[] | del(.text)]}' | write_result
    local f=$RESULTS/$NAME.json
    jq -e '.after_text_identical' "$f" >/dev/null || fail "after churn the output differs or fails"
    jq -e '.members_after == 4 and .converged_after_load_s != null' "$f" >/dev/null \
        || fail "restarted nodes did not rejoin (all 4 on one plan) within 60 s: $(jq .members_after "$f") members"
    jq -e '.wrong_texts == 0' "$f" >/dev/null || fail "completed requests with wrong text during churn"
    jq -e '.failed == 0' "$f" >/dev/null \
        || fail "$(jq -r '"\(.failed) of \(.requests)"' "$f") requests failed during churn: $(jq -r '.errors | join("; ")' "$f")"
    pass "$(jq -r '"\(.requests) requests under churn, none failed, all identical; \(.tokens_per_s) tok/s aggregate; 4 members again"' "$f")"
}

# CI-sized kill: 3 nodes (even placement: 3 stages), a MAX_TOKENS (80) greedy stream, the
# last stage's node killed after FAULT_AT (20) chunks; passes when the in-flight request
# completes with the fault-free text, a new plan is healthy and a new request is identical.
scenario_smoke() {
    FLEET_NODES="1 2 3"
    LONG=${MAX_TOKENS:-80}
    FAULT_AT=${FAULT_AT_ENV:-20}
    scenario_kill
}
