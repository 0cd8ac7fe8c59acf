# Performance scenarios for run.sh (sourced): baseline, hetero, latency, links.

# bench N RUNS MAX_TOKENS: greedy streaming completions on node N's API (lib/client.py bench).
bench() {
    python3 "$TESTBED/lib/client.py" bench "$(api_url "$1")" --runs "$2" --max-tokens "$3" \
        ${PROMPT:+--prompt "$PROMPT"}
}

# The plan node N serves with: epoch, stages (with node names), predicted/measured ms per token.
plan_json() {
    cluster_json "$1" | jq -c '
        (.members | map({key: .peer_id, value: (.data_addr | split(":")[0] | split(".")[3] | "node" + .[1:])}) | from_entries) as $n
        | .plan + {stages: [.plan.stages[] | . + {node: $n[.peer_id]}], state, replans}'
}

scenario_baseline() {
    fleet_up default
    local b
    b=$(bench 1 "${RUNS:-3}" "${MAX_TOKENS:-64}")
    jq -n --argjson b "$b" --argjson plan "$(plan_json 1)" --argjson cluster "$(cluster_json 1)" \
        '$b + {plan: $plan, cluster: $cluster} | del(.runs[].text)' | write_result
    fleet_down
    [ "$(jq -r .ok <<<"$b")" = true ] || fail "a completion failed"
    pass "median decode $(jq -r .median_decode_tok_s <<<"$b") tok/s"
}

# Same fleet twice: --placement even, then planned. Single-stream decode tok/s (median of
# RUNS greedy requests of MAX_TOKENS) and the plan's predicted ms/token for each.
scenario_hetero() {
    local runs=${RUNS:-5} max=${MAX_TOKENS:-64} out='{}' b p
    for placement in even planned; do
        ENV_ALL="SHOAL_PLACEMENT=$placement"
        fleet_up "$placement"
        b=$(bench 1 "$runs" "$max")
        p=$(plan_json 1)
        fleet_down
        out=$(jq --arg k "$placement" --argjson b "$b" --argjson p "$p" \
            '.[$k] = ($b + {plan: $p} | del(.runs[].text))' <<<"$out")
    done
    out=$(jq '. + {
        decode_ratio_planned_over_even: (.planned.median_decode_tok_s / .even.median_decode_tok_s),
        predicted_ratio_even_over_planned: (.even.plan.predicted_ms_per_token / .planned.plan.predicted_ms_per_token),
        same_text: (.even.text == .planned.text), target_ratio: 1.3}
        | . + {target_met: (.decode_ratio_planned_over_even >= 1.3)}' <<<"$out")
    write_result <<<"$out"
    local r
    r=$(jq -r '.decode_ratio_planned_over_even' <<<"$out")
    log "hetero: even $(jq -r .even.median_decode_tok_s <<<"$out") tok/s, planned $(jq -r .planned.median_decode_tok_s <<<"$out") tok/s, ratio $r (target 1.3 met: $(jq -r .target_met <<<"$out"))"
    jq -e '.even.ok and .planned.ok' >/dev/null <<<"$out" || fail "a completion failed"
    jq -e '.same_text' >/dev/null <<<"$out" || fail "even and planned produced different greedy text"
    jq -e '.decode_ratio_planned_over_even >= 1' >/dev/null <<<"$out" || fail "planned slower than even (ratio $r)"
    pass "planned/even decode ratio $r"
}

# --link-emulation delay=Xms on every node (both directions of each hop are delayed).
scenario_latency() {
    local runs=${RUNS:-5} max=${MAX_TOKENS:-64} out='[]' b p
    for d in ${LATENCY_DELAYS:-0 2 10}; do
        ENV_ALL="SHOAL_PLACEMENT=${PLACEMENT:-planned}"
        [ "$d" = 0 ] || ENV_ALL+=$'\n'"SHOAL_LINK_EMULATION=delay=${d}ms"
        fleet_up "delay${d}ms"
        b=$(bench 1 "$runs" "$max")
        p=$(plan_json 1)
        fleet_down
        out=$(jq --argjson d "$d" --argjson b "$b" --argjson p "$p" \
            '. + [{delay_ms: $d} + ($b + {plan: $p})]' <<<"$out")
    done
    out=$(jq --arg pl "${PLACEMENT:-planned}" '{placement: $pl, delays: (. | map(del(.runs[].text))),
        same_text: (map(.text) | unique | length == 1)}' <<<"$out")
    write_result <<<"$out"
    jq -r '.delays[] | "run.sh: delay \(.delay_ms) ms: decode \(.median_decode_tok_s) tok/s, ttft \(.median_ttft_s) s, stages \(.plan.stages | length)"' <<<"$out" >&2
    jq -e '.delays | all(.ok)' >/dev/null <<<"$out" || fail "a completion failed"
    jq -e '.same_text' >/dev/null <<<"$out" || fail "link delay changed the greedy text"
    # Each token crosses at least one shaped hop when a stage is not on the head node, so
    # ms/token >= one-way delay; faster means the emulation is not on the data path.
    local bad
    bad=$(jq -r '[.delays[] | select(.delay_ms > 0 and ([.plan.stages[] | .node] != ["node1"])
        and (1000 / .median_decode_tok_s) < .delay_ms) | .delay_ms] | join(" ")' <<<"$out")
    [ -z "$bad" ] || fail "link emulation not in effect: decode faster than one hop's delay at delay=${bad} ms"
    pass "all delays served identical greedy text"
}

# Node indices (1-4) of the first two stages of node N's plan, as "A B".
first_pair() {
    echo "$(stage_node "$1" 0) $(stage_node "$1" 1)"
}

# Whether nodes A and Z run consecutive stages (either order) in node N's plan.
adjacent() {
    local n=$1 a=$2 z=$3 k count x y
    count=$(cluster_json "$n" | jq '.plan.stages | length')
    for ((k = 0; k + 1 < count; k++)); do
        x=$(stage_node "$n" "$k") y=$(stage_node "$n" $((k + 1)))
        [ "$x $y" = "$a $z" ] || [ "$x $y" = "$z $a" ] && return 0
    done
    return 1
}

# One pair of nodes gets a slow link (LINK_DELAY ms each way, 15 by default), every other
# link stays fast (SHOAL_MEMORY=LINK_MEMORY, 80MiB by default, so no node holds the model
# alone). Two fleets, --placement link-blind (hops priced as a LAN) and planned (measured
# links), each started until its first plan runs the slow pair back to back (start-up layer
# timings vary, and with them the plan; a fleet whose plan avoids the pair names the pair
# the next one slows). Then 3 warm-up requests (stages measure the links they send on; the
# link-aware coordinator replans), and RUNS greedy requests of MAX_TOKENS. Records both
# plans, predicted and measured ms per token, and the ratio (target 1.3x), text identical.
scenario_links() {
    local runs=${RUNS:-5} max=${MAX_TOKENS:-64} delay=${LINK_DELAY:-15} out='{}' b p
    local memory="SHOAL_MEMORY=${LINK_MEMORY:-80MiB}" a z attempt first
    ENV_ALL="$memory"$'\n'"SHOAL_PLACEMENT=link-blind"
    fleet_up probe
    read -r a z <<<"$(first_pair 1)"
    fleet_down
    [ -n "$a" ] && [ -n "$z" ] && [ "$a" != "$z" ] || fail "the probe fleet's plan has fewer than two stages"
    for placement in link-blind planned; do
        for attempt in 1 2 3 4 5; do
            ENV_ALL="$memory"$'\n'"SHOAL_PLACEMENT=$placement"
            # @SUBNET@ is the fleet's own prefix, filled in by fleet_up.
            unset ENV_NODE1 ENV_NODE2 ENV_NODE3 ENV_NODE4
            declare -g "ENV_NODE$a=SHOAL_LINK_EMULATION=delay=${delay}ms,to=@SUBNET@.1$z"
            declare -g "ENV_NODE$z=SHOAL_LINK_EMULATION=delay=${delay}ms,to=@SUBNET@.1$a"
            fleet_up "$placement-$attempt"
            adjacent 1 "$a" "$z" && break
            log "links: plan $(plan_summary 1) does not run node$a and node$z back to back; slowing its first pair instead"
            read -r a z <<<"$(first_pair 1)"
            fleet_down
            [ "$attempt" -lt 5 ] || fail "no $placement fleet in 5 ran the slow pair back to back"
        done
        first=$(plan_json 1)
        # Stages measure the links they send on; the coordinator replans when one is slow.
        bench 1 3 16 >/dev/null
        wait_converged 30 "$(now)" >/dev/null
        b=$(bench 1 "$runs" "$max")
        p=$(plan_json 1)
        fleet_down
        out=$(jq --arg k "$placement" --argjson b "$b" --argjson p "$p" --argjson f "$first" \
            --arg pair "node$a-node$z" '.[$k] = ($b + {plan: $p, first_plan: $f, slow_pair: $pair} | del(.runs[].text))' <<<"$out")
    done
    unset ENV_NODE1 ENV_NODE2 ENV_NODE3 ENV_NODE4
    out=$(jq --argjson d "$delay" '. + {
        slow_one_way_ms: $d,
        decode_ratio_aware_over_blind: (.planned.median_decode_tok_s / ."link-blind".median_decode_tok_s),
        same_text: (."link-blind".text == .planned.text), target_ratio: 1.3}
        | . + {target_met: (.decode_ratio_aware_over_blind >= 1.3)}
        | . + {predicted_over_measured: {
            "link-blind": (."link-blind".plan.predicted_ms_per_token / (1000 / ."link-blind".median_decode_tok_s)),
            planned: (.planned.plan.predicted_ms_per_token / (1000 / .planned.median_decode_tok_s))}}' <<<"$out")
    write_result <<<"$out"
    local r
    r=$(jq -r '.decode_ratio_aware_over_blind' <<<"$out")
    log "links: blind $(jq -r '."link-blind".median_decode_tok_s' <<<"$out") tok/s, aware $(jq -r .planned.median_decode_tok_s <<<"$out") tok/s, ratio $r (target 1.3 met: $(jq -r .target_met <<<"$out"))"
    jq -e '."link-blind".ok and .planned.ok' >/dev/null <<<"$out" || fail "a completion failed"
    jq -e '.same_text' >/dev/null <<<"$out" || fail "link-blind and link-aware plans produced different greedy text"
    jq -e '.decode_ratio_aware_over_blind >= 1' >/dev/null <<<"$out" || fail "link-aware slower than link-blind (ratio $r)"
    pass "link-aware/link-blind decode ratio $r"
}
