# Performance scenarios for run.sh (sourced): baseline, hetero, latency.

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
