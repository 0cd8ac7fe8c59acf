#!/usr/bin/env python3
"""Draws one scenario's figure from what run.sh recorded.

  plot.py RESULT.json TIMELINE.json OUT.png

One column per fleet the scenario started (hetero and latency start several), three rows:

1. tok/s over time: text chunks received by all of the scenario's clients per 1 s bin (one
   chunk is one token for this model), with the fault marks (`event` in lib/fleet.sh) and
   the plan epoch changes seen by the API node;
2. per-stage latency: mean compute time of one decode step of each stage, per sampling
   interval (from the nodes' shoal_stage_step_seconds sums and counts), and the planner's
   prediction for each stage of the last plan as a dashed line;
3. placement: the layers each node ran in every plan epoch seen during the run, in order
   (the first row is the plan before any fault, the last the plan after).

Time is seconds since the fleet was started. Needs matplotlib (run.sh sets up a venv).
"""
import json
import math
import sys
import textwrap
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NODE_COLORS = {"node1": "tab:blue", "node2": "tab:orange", "node3": "tab:green",
               "node4": "tab:red"}
FAULT_KINDS = {"fault": "tab:red", "restore": "tab:green", "note": "tab:gray"}


def node_of_addr(addr):
    """'172.29.7.13:7601' or 'http://172.29.7.13:8080' -> 'node3' (fleet addresses .11-.14)."""
    host = addr.split("//")[-1].split(":")[0]
    last = host.split(".")[-1]
    return f"node{last[1:]}" if len(last) == 2 and last.startswith("1") else host


def names(view):
    return {m["peer_id"]: node_of_addr(m["data_addr"]) for m in view.get("members", [])
            if m.get("data_addr")}


def fleets_of(tl):
    order = []
    for e in tl["events"]:
        if e["kind"] == "fleet_up" and e["fleet"] not in order:
            order.append(e["fleet"])
    return order or [""]


def api_url(result, tl, fleet):
    node = result.get("api_node") or "node1"
    for c in tl["cluster"]:
        if c["fleet"] == fleet and node_of_addr(c["url"]) == node:
            return c["url"]
    return None


def plot_tokens(ax, tl, fleet, t0, epochs):
    times = [t - t0 for tr in tl["tokens"] if tr["fleet"] == fleet for t in tr["times"]]
    if times:
        end = math.ceil(max(times)) + 1
        bins = [0] * end
        for t in times:
            if t >= 0:
                bins[int(t)] += 1
        xs = [i + 0.5 for i in range(end)]
        ax.step(xs, bins, where="mid", color="black", lw=1.2, label="tokens received / s")
        ax.set_ylim(0, max(bins) * 1.25 + 1)
    else:
        ax.text(0.5, 0.5, "no tokens recorded", transform=ax.transAxes, ha="center")
    marks(ax, tl, fleet, t0, epochs)
    ax.set_ylabel("tok/s (all clients)")
    ax.set_title(f"{fleet or 'fleet'}: throughput over time", fontsize=10)


def marks(ax, tl, fleet, t0, epochs):
    ymax = ax.get_ylim()[1]
    for e in tl["events"]:
        if e["fleet"] != fleet or e["kind"] not in FAULT_KINDS:
            continue
        x = e["t"] - t0
        ax.axvline(x, color=FAULT_KINDS[e["kind"]], lw=1.5)
        ax.text(x, ymax * 0.97, " " + e["text"], rotation=90, va="top", ha="right",
                fontsize=7, color=FAULT_KINDS[e["kind"]])
    for epoch, t in epochs:
        ax.axvline(t - t0, color="tab:purple", lw=0.8, ls=":")
        ax.text(t - t0, ymax * 0.03, f" e{epoch}", fontsize=7, color="tab:purple")


def plot_stages(ax, tl, fleet, t0, last_plan, epochs):
    series = defaultdict(list)
    last = {}
    for m in sorted((m for m in tl["metrics"] if m["fleet"] == fleet), key=lambda m: m["t"]):
        node = node_of_addr(m["url"])
        for key, v in m.get("stage_step", {}).items():
            if "kind=decode" not in key or "sum" not in v or "count" not in v:
                continue
            # Labelled by the stage's index in its plan (a bounded label set).
            layers = "stage " + key.split("stage=")[-1].split("|")[0]
            k = (node, layers)
            if k in last:
                ds, dc = v["sum"] - last[k][0], v["count"] - last[k][1]
                if dc > 0 and ds >= 0:
                    series[k].append((m["t"] - t0, 1000 * ds / dc))
            last[k] = (v["sum"], v["count"])
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "v")]
    seen = defaultdict(int)
    for (node, layers), pts in sorted(series.items()):
        xs, ys = [], []
        for x, y in pts:
            if xs and x - xs[-1] > 3:  # no sample for a while (node down, idle): a gap
                xs.append(float("nan"))
                ys.append(float("nan"))
            xs.append(x)
            ys.append(y)
        ls, marker = styles[seen[node] % len(styles)]
        seen[node] += 1
        ax.plot(xs, ys, marker=marker, ms=3, lw=1, ls=ls, color=NODE_COLORS.get(node),
                label=f"{node} {layers}")
    if last_plan:
        for s in last_plan["stages"]:
            node = s.get("node") or "?"
            if s.get("predicted_ms") is not None:
                ax.axhline(s["predicted_ms"], color=NODE_COLORS.get(node, "gray"), ls="--",
                           lw=0.8)
    if not series:
        ax.text(0.5, 0.5, "no decode steps recorded", transform=ax.transAxes, ha="center")
    else:
        ax.legend(fontsize=7, loc="upper left", title="stage (measured)", title_fontsize=7)
        ax.set_ylim(bottom=0)
    marks(ax, tl, fleet, t0, epochs)
    ax.set_ylabel("ms per decode step")
    ax.set_xlabel("seconds since fleet start")
    ax.set_title("per-stage decode latency (dashed: planner's prediction, last plan)",
                 fontsize=10)


def plot_placement(ax, plans, n_layers):
    if not plans:
        ax.text(0.5, 0.5, "no plan recorded", transform=ax.transAxes, ha="center")
        return
    for row, (epoch, t, stages, pred) in enumerate(plans):
        y = len(plans) - 1 - row
        for s in stages:
            a, b = s["layers"]
            color = NODE_COLORS.get(s["node"], "gray")
            ax.broken_barh([(a, b - a)], (y - 0.4, 0.8), color=color, alpha=0.8)
            ax.text((a + b) / 2, y, f"{s['node']}\n{a}-{b}", ha="center", va="center",
                    fontsize=7)
    ax.set_yticks(range(len(plans)))
    ax.set_yticklabels([f"epoch {e} @{t:.0f}s\n{p:.1f} ms/tok pred."
                        for e, t, _, p in reversed(plans)], fontsize=7)
    ax.set_xlim(0, n_layers)
    ax.set_xlabel("layer")
    ax.set_title("placement per plan epoch (first: before, last: after)", fontsize=10)


def plans_seen(tl, fleet, url, t0):
    """[(epoch, first seen s, stages with node names, predicted ms/token)] in order."""
    out, seen = [], set()
    for c in sorted((c for c in tl["cluster"] if c["fleet"] == fleet and c["url"] == url),
                    key=lambda c: c["t"]):
        plan = c["view"].get("plan")
        if not plan or plan["epoch"] in seen:
            continue
        seen.add(plan["epoch"])
        n = names(c["view"])
        stages = [{"node": n.get(s["peer_id"], s["peer_id"][:8]), "layers": s["layers"],
                   "predicted_ms": s.get("predicted_ms")} for s in plan["stages"]]
        out.append((plan["epoch"], c["t"] - t0, stages, plan["predicted_ms_per_token"]))
    return out


def n_layers_of(tl):
    for c in tl["cluster"]:
        model = c["view"].get("model") or {}
        for k in ("n_layers", "layers", "block_count"):
            if isinstance(model.get(k), int):
                return model[k]
        plan = c["view"].get("plan")
        if plan:
            return max(s["layers"][1] for s in plan["stages"])
    return 30


def main():
    result_path, timeline_path, out = sys.argv[1:4]
    with open(result_path) as f:
        result = json.load(f)
    with open(timeline_path) as f:
        tl = json.load(f)
    fleets = fleets_of(tl)
    n_layers = n_layers_of(tl)
    fig, axes = plt.subplots(3, len(fleets), figsize=(7 * len(fleets), 11), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 3, 2]})
    for col, fleet in enumerate(fleets):
        ups = [e["t"] for e in tl["events"] if e["kind"] == "fleet_up" and e["fleet"] == fleet]
        t0 = ups[0] if ups else min([c["t"] for c in tl["cluster"]] or [0])
        url = api_url(result, tl, fleet)
        plans = plans_seen(tl, fleet, url, t0) if url else []
        epochs = [(e, t + t0) for e, t, _, _ in plans[1:]]
        plot_tokens(axes[0][col], tl, fleet, t0, epochs)
        last_plan = {"stages": plans[-1][2]} if plans else None
        plot_stages(axes[1][col], tl, fleet, t0, last_plan, epochs)
        axes[1][col].sharex(axes[0][col])
        plot_placement(axes[2][col], plans, n_layers)
    verdict = {True: "PASS", False: "FAIL"}.get(result.get("pass"), "?")
    head = f"testbed {result.get('scenario')}: {verdict} - {result.get('message') or ''}"
    fig.suptitle(textwrap.fill(head, 80 * len(fleets))
                 + f"\n{result.get('date', '')}, commit {result.get('commit', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"plot.py: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
