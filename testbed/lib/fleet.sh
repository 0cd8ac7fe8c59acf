# Fleet lifecycle for run.sh (sourced): start a fresh compose project, wait until it serves,
# map peers to containers, save logs and tear it down. A scenario may start several fleets
# one after the other (fleet_up LABEL ... fleet_down); the EXIT trap removes whichever is up.
#
# Per-run node settings: before fleet_up, set ENV_ALL (lines of SHOAL_*=value for every
# node) and ENV_NODE1..ENV_NODE4 (extra lines for one node). FLEET_NODES ("1 2 3 4") picks
# which of the compose file's nodes start (smoke runs three). FLEET_SEEDER=1 adds
# docker-compose.seeder.yml: only node1 has the model file, the others fetch their layers
# from it.
#
# Recording (for the plots, lib/plot.py): while a fleet is up, `client.py poll` samples
# every node's /v1/cluster and /metrics each second into $REC; every completion the client
# makes appends its chunk times to $REC/tokens.jsonl (TB_TRACE); scenarios mark faults with
# `event KIND TEXT`. run.sh folds it all into results/NAME-timeline.json.

die() {
    echo "run.sh: $*" >&2
    exit 1
}
log() { echo "run.sh: $*" >&2; }

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    die "needs docker compose (plugin) or docker-compose"
fi

PROJECT=""
FLEET_LABEL=""
MDNS_RULE=()
POLL_PID=""
WORKDIR=$(mktemp -d)
REC=$WORKDIR/rec
mkdir -p "$REC"
export TB_TRACE=$REC/tokens.jsonl TB_FLEET=""

# event KIND TEXT: a timestamped mark (fault, restore, fleet start) for the plots.
event() {
    jq -cn --argjson t "$(date +%s.%N)" --arg f "$FLEET_LABEL" --arg k "$1" --arg x "$2" \
        '{t: $t, fleet: $f, kind: $k, text: $x}' >>"$REC/events.jsonl"
}

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

compose() {
    local files=(-f "$TESTBED/docker-compose.yml")
    [ "${FLEET_SEEDER:-0}" = 1 ] && files+=(-f "$TESTBED/docker-compose.seeder.yml")
    "${COMPOSE[@]}" -p "$PROJECT" "${files[@]}" "$@"
}

# The model file the fleet runs, on the host.
model_path() {
    echo "${SHOAL_MODELS_DIR:-$TESTBED/../models}/${SHOAL_MODEL_FILE:-SmolLM2-135M-Instruct.Q4_1.gguf}"
}

# node index (1-4) -> its API URL on the internal bridge (the host reaches it directly).
api_url() { echo "http://$SHOAL_SUBNET_PREFIX.1$1:8080"; }
container() { compose ps -q "node$1"; }

fleet_up() {
    FLEET_LABEL=$1
    TB_FLEET=$1
    PROJECT="shoaltb-$(echo "$NAME-$FLEET_LABEL" | tr -c 'a-z0-9\n' '-')-$(date +%s)-$$"
    export SHOAL_SUBNET_PREFIX
    SHOAL_SUBNET_PREFIX=$(pick_subnet)
    export TB_ENV_DIR=$WORKDIR/env TB_SECRETS_DIR=$WORKDIR/secrets
    mkdir -p "$TB_ENV_DIR" "$TB_SECRETS_DIR"
    # Every fleet is a private cluster with its own key (64 hex chars, as `shoal keygen`).
    [ -f "$TB_SECRETS_DIR/cluster.key" ] \
        || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$TB_SECRETS_DIR/cluster.key"
    # The nodes run as uid 65534, not as the file's owner: the key must be world-readable
    # inside the mount whatever the caller's umask (077 would make it 0600 and every node
    # would exit with "permission denied"). WORKDIR is mktemp's 0700 directory, so no
    # other user of the host can reach it.
    chmod 0755 "$TB_SECRETS_DIR" && chmod 0644 "$TB_SECRETS_DIR/cluster.key"
    printf '%s\n' "${ENV_ALL:-}" >"$TB_ENV_DIR/all.env"
    # mDNS needs a host firewall rule (open_mdns); without one, nodes 2-4 get node1 as a
    # static peer instead.
    STATIC_PEER=${TB_STATIC_PEER:-0}
    if [ "$STATIC_PEER" = 0 ] && ! iptables -S DOCKER-USER >/dev/null 2>&1; then
        log "WARNING: cannot edit the DOCKER-USER iptables chain (not root, or no iptables): mDNS cannot cross the bridge, so nodes 2-4 get node1 as a static peer"
        STATIC_PEER=1
    fi
    for i in 1 2 3 4; do
        local var="ENV_NODE$i" extra=""
        [ "$STATIC_PEER" = 1 ] && [ "$i" != 1 ] \
            && extra="SHOAL_PEERS=/ip4/$SHOAL_SUBNET_PREFIX.11/tcp/7600"
        printf '%s\n%s\n' "${!var:-}" "$extra" | sed "s/@SUBNET@/$SHOAL_SUBNET_PREFIX/g" >"$TB_ENV_DIR/node$i.env"
    done
    if [ "${FLEET_SEEDER:-0}" = 1 ]; then
        # Nodes 2-4 get an empty /models and the hash of the file node1 holds.
        export TB_EMPTY_DIR=$WORKDIR/empty SHOAL_MODEL_SHA256
        mkdir -p "$TB_EMPTY_DIR"
        SHOAL_MODEL_SHA256=$(sha256sum "$(model_path)" | cut -d' ' -f1) \
            || die "cannot hash $(model_path)"
    fi
    local services=()
    for i in ${FLEET_NODES:-1 2 3 4}; do services+=("node$i"); done
    log "starting fleet $PROJECT on $SHOAL_SUBNET_PREFIX.0/24 (${services[*]}$([ "${FLEET_SEEDER:-0}" = 1 ] && echo '; only node1 holds the model'); $(tr '\n' ' ' <"$TB_ENV_DIR/all.env"))"
    event fleet_up "${services[*]}"
    # One node at a time, each once the one before has timed its layer: on separate boards
    # those timings run alone, here four containers share two cores, and timings taken
    # together (and the plans made from them) were 1.4-2x slower than the nodes decode.
    FLEET_START=$SECONDS
    local svc t0
    for svc in "${services[@]}"; do
        compose up -d "$svc" >/dev/null 2>&1 \
            || { compose up -d "$svc" || true; die "compose up $svc failed"; }
        # The bridge exists once the first node runs: let mDNS through before the others
        # (a node without the model finds the holder by mDNS to fetch its measured layer).
        [ "$STATIC_PEER" = 1 ] || [ ${#MDNS_RULE[@]} -gt 0 ] || open_mdns
        t0=$SECONDS
        until compose logs "$svc" 2>/dev/null | grep -q "measured this node"; do
            [ $((SECONDS - t0)) -lt 30 ] || { log "WARNING: $svc did not report its layer timing within 30 s"; break; }
            sleep 0.2
        done
    done
    # Test traffic must stay on the fleet's bridge, never follow the default route.
    ip route get "$SHOAL_SUBNET_PREFIX.11" | grep -q ' dev br-' \
        || die "no bridge route to $SHOAL_SUBNET_PREFIX.11 ($(ip route get "$SHOAL_SUBNET_PREFIX.11" | head -1)); refusing to send traffic"
    local urls=()
    for i in ${FLEET_NODES:-1 2 3 4}; do urls+=("$(api_url "$i")"); done
    python3 "$TESTBED/lib/client.py" poll "$REC" "${urls[@]}" >/dev/null 2>&1 &
    POLL_PID=$!
    wait_healthy 1
    wait_members 1 "${#services[@]}" "${FORM_TIMEOUT:-60}"
    FLEET_READY_S=$((SECONDS - FLEET_START))
    event ready "$(plan_summary 1)"
    log "fleet ready after $FLEET_READY_S s: $(plan_summary 1)"
}

# Docker isolates an internal network with `DOCKER-ISOLATION-STAGE-1 ! -d <subnet> -i br-X
# -j DROP`, which (bridge-nf-call-iptables=1) also drops the mDNS multicast between the
# containers on the bridge. This accepts exactly that traffic, bridge to same bridge, in the
# DOCKER-USER chain that FORWARD consults first; fleet_down removes it. Multicast to
# 224.0.0.251 is link-local: it never leaves the bridge.
open_mdns() {
    local net
    net=$(docker network ls -q --no-trunc -f "name=^${PROJECT}_fleet\$") \
        && [ -n "$net" ] || die "no network ${PROJECT}_fleet"
    MDNS_RULE=(DOCKER-USER -i "br-${net:0:12}" -o "br-${net:0:12}" -d 224.0.0.251/32 -p udp --dport 5353 -j ACCEPT)
    iptables -I "${MDNS_RULE[@]}" || die "could not add the mDNS rule (iptables -I ${MDNS_RULE[*]})"
}

fleet_down() {
    [ -n "$PROJECT" ] || return 0
    if [ ${#MDNS_RULE[@]} -gt 0 ]; then
        iptables -D "${MDNS_RULE[@]}" 2>/dev/null || log "WARNING: could not remove iptables rule ${MDNS_RULE[*]}"
        MDNS_RULE=()
    fi
    if [ -n "$POLL_PID" ]; then
        kill "$POLL_PID" 2>/dev/null || true
        wait "$POLL_PID" 2>/dev/null || true
        POLL_PID=""
    fi
    event fleet_down ""
    mkdir -p "$RESULTS"
    local logfile="$RESULTS/$NAME${FLEET_LABEL:+-$FLEET_LABEL}.log"
    compose logs --no-color >"$logfile" 2>&1 || true
    compose down -v --remove-orphans >/dev/null 2>&1 \
        || echo "run.sh: teardown of $PROJECT failed; clean up with: ${COMPOSE[*]} -p $PROJECT down -v --remove-orphans" >&2
    log "fleet $PROJECT removed; logs in ${logfile#"$TESTBED/"}"
    PROJECT=""
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    # A paused or disconnected container must not block `down`.
    if [ -n "$PROJECT" ]; then
        for i in 1 2 3 4; do
            local c
            c=$(container "$i" 2>/dev/null) || continue
            [ -n "$c" ] || continue
            [ "$(docker inspect -f '{{.State.Paused}}' "$c" 2>/dev/null)" = true ] && docker unpause "$c" >/dev/null 2>&1
        done
    fi
    fleet_down
    rm -rf "$WORKDIR"
    log "$NAME finished (exit $rc)"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

health_code() { curl -s -o /dev/null -w '%{http_code}' -m 2 "$(api_url "$1")/health" || true; }
cluster_json() { curl -s -m 5 "$(api_url "$1")/v1/cluster" || true; }

# Waits until node N's GET /health is 200 (HEALTH_TIMEOUT s, default 300).
wait_healthy() {
    local n=$1 deadline=$((SECONDS + ${HEALTH_TIMEOUT:-300})) code
    while [ $SECONDS -lt $deadline ]; do
        code=$(health_code "$n")
        [ "$code" = 200 ] && return 0
        local c
        c=$(container "$n")
        if [ -z "$c" ] || [ "$(docker inspect -f '{{.State.Running}}' "$c")" != true ]; then
            compose logs --no-color --tail 20 "node$n" >&2 || true
            die "node$n exited before becoming healthy"
        fi
        sleep 1
    done
    log "cluster view of node$n: $(cluster_json "$n" | jq -c '{state, problem, plan}' 2>/dev/null)"
    die "node$n not healthy after ${HEALTH_TIMEOUT:-300}s (last status ${code:-none})"
}

# Waits until node N sees M members and serves a ready plan that has been stable for 2 s
# (the coordinator replans after each join); dies after T s.
wait_members() {
    local n=$1 m=$2 t=$3 t0=$SECONDS got epoch last="" since_t=0
    while [ $((SECONDS - t0)) -lt "$t" ]; do
        read -r got epoch <<<"$(cluster_json "$n" | jq -r '"\(.members | length) \(if .state == "ready" then .plan.epoch else "x" end)"' 2>/dev/null || echo "0 x")"
        if [ "$got" = "$m" ] && [ "$epoch" != x ] && [ "$(health_code "$n")" = 200 ]; then
            if [ "$epoch" = "$last" ]; then
                [ $((SECONDS - since_t)) -ge 2 ] && return 0
            else
                last=$epoch since_t=$SECONDS
            fi
        else
            last=""
        fi
        sleep 0.5
    done
    log "cluster view of node$n: $(cluster_json "$n" | jq -c '{state, problem, members: (.members | length), plan}' 2>/dev/null)"
    die "fleet did not form: node$n sees ${got:-0} of $m members after $t s (discovery: $([ "$STATIC_PEER" = 1 ] && echo 'mDNS + static peer' || echo 'mDNS only'))"
}

plan_epoch() { cluster_json "$1" | jq -r '.plan.epoch // 0' 2>/dev/null || echo 0; }

# "epoch E: nodeA[0,8) nodeB[8,30) predicted P ms/token", stages named by container.
plan_summary() {
    cluster_json "$1" | jq -r '
        (.members | map({key: .peer_id, value: (.data_addr | split(":")[0] | split(".")[3] | "node" + .[1:])}) | from_entries) as $names
        | "epoch \(.plan.epoch): " + ([.plan.stages[] | "\($names[.peer_id] // .peer_id)[\(.layers[0]),\(.layers[1]))"] | join(" "))
          + " predicted \(.plan.predicted_ms_per_token) ms/token"' 2>/dev/null || echo "no plan"
}

# Node index (1-4) running stage K of node N's current plan (K = -1: the last stage).
stage_node() {
    local n=$1 k=$2 peer addr
    cluster_json "$n" | jq -r --argjson k "$k" '
        .plan.stages[$k].peer_id as $p | .members[] | select(.peer_id == $p) | .data_addr' \
        | sed -E 's/.*\.1([1-4]):.*/\1/'
}

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# Waits (up to $2 s) for node N to be healthy with a plan epoch > $3; prints the seconds
# since the timestamp $4 (from `now`), or "null" on timeout.
wait_new_plan() {
    local n=$1 timeout=$2 old=$3 from=$4 t0=$SECONDS
    while [ $((SECONDS - t0)) -lt "$timeout" ]; do
        if [ "$(health_code "$n")" = 200 ] && [ "$(plan_epoch "$n")" -gt "$old" ]; then
            since "$from"
            return 0
        fi
        sleep 0.2
    done
    echo null
}

# Waits (up to $1 s) until every node of the fleet is healthy, sees all the fleet's nodes as
# members and serves the same ready plan (epoch and stages: a node that planned alone may
# reuse an epoch number the others used for another plan); prints the seconds since the timestamp $2
# (from `now`), or "null" on timeout.
wait_converged() {
    local timeout=$1 from=$2 t0=$SECONDS nodes=(${FLEET_NODES:-1 2 3 4}) views i
    while [ $((SECONDS - t0)) -lt "$timeout" ]; do
        views=""
        for i in "${nodes[@]}"; do
            views+="$(cluster_json "$i" | jq -c '[.state, (.members | length), .plan.epoch, [.plan.stages[]? | .peer_id, .layers]]' 2>/dev/null || echo null) "
        done
        if [ "$(tr ' ' '\n' <<<"$views" | grep -v '^$' | sort -u | wc -l)" = 1 ] \
            && [[ "$views" == "[\"ready\",${#nodes[@]},"* ]]; then
            since "$from"
            return 0
        fi
        sleep 0.5
    done
    log "not converged after $timeout s: ${views:-no views}"
    echo null
}
