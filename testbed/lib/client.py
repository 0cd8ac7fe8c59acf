#!/usr/bin/env python3
"""HTTP client for the testbed scenarios (stdlib only). Prints one JSON document on stdout.

  client.py bench  URL --runs N --max-tokens M [--prompt P]
      N greedy streaming completions, one after the other: per run the time to first
      token, decode tok/s (tokens after the first over the time after the first) and
      end-to-end tok/s; medians over the runs.
  client.py stream URL --max-tokens M [--prompt P] [--progress FILE]
      One greedy streaming completion; writes the number of text chunks received so far
      to FILE as they arrive (for a scenario to act mid-generation). Reports whether the
      stream ended with [DONE] or an error, and what text arrived.
  client.py load   URL --clients C --seconds S --max-tokens M [--prompt P]
      C concurrent clients sending greedy completions back to back for S seconds.
  client.py poll   OUT_DIR URL... [--interval S]
      Until killed: every S seconds GET /v1/cluster and /metrics of every URL (one thread
      per node, so a paused node does not stall the others) and append one JSON line per
      answer to OUT_DIR/cluster.jsonl and OUT_DIR/metrics.jsonl (for the plots).

With TB_TRACE=FILE in the environment, every completion appends one JSON line to FILE: its
wall-clock start, the wall-clock time of each text chunk, whether it completed, and TB_FLEET
(the fleet label run.sh sets). The plots draw tok/s over time from these.
"""
import argparse
import http.client
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.parse

DEFAULT_PROMPT = ("The three most useful things to know about running language models "
                  "on small devices are")


def request_body(prompt, max_tokens, stream):
    return json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "seed": 1, "stream": stream})


def stream_completion(url, prompt, max_tokens, progress=None, timeout=600):
    """One streaming completion. Never raises: failures are in the result."""
    u = urllib.parse.urlparse(url)
    res = {"completed": False, "chunks": 0, "text": "", "error": None, "http_code": None,
           "finish_reason": None, "ttft_s": None, "seconds": None}
    start = time.monotonic()
    wall0 = time.time()
    times = []
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        conn.request("POST", "/v1/completions", request_body(prompt, max_tokens, True),
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        res["http_code"] = resp.status
        if resp.status != 200:
            res["error"] = resp.read().decode(errors="replace")[:500]
            return res
        while True:
            line = resp.readline()
            if not line:
                res["error"] = res["error"] or "stream ended without [DONE]"
                break
            line = line.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                res["completed"] = res["error"] is None
                break
            event = json.loads(data)
            if "error" in event:
                res["error"] = event["error"].get("message", json.dumps(event["error"]))
                continue
            choice = (event.get("choices") or [{}])[0]
            text = choice.get("text") or ""
            if text:
                times.append(time.monotonic() - start)
                res["chunks"] += 1
                res["text"] += text
                if progress:
                    with open(progress, "w") as f:
                        f.write(str(res["chunks"]))
            if choice.get("finish_reason"):
                res["finish_reason"] = choice["finish_reason"]
    except Exception as e:  # noqa: BLE001 -- the scenario wants every failure as data
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        res["seconds"] = time.monotonic() - start
        if times:
            res["ttft_s"] = times[0]
            if len(times) > 1 and times[-1] > times[0]:
                res["decode_tok_s"] = (len(times) - 1) / (times[-1] - times[0])
        res["e2e_tok_s"] = res["chunks"] / res["seconds"] if res["seconds"] else None
        trace(wall0, times, res)
    return res


_trace_lock = threading.Lock()


def trace(wall0, times, res):
    """Appends one completion's chunk times to $TB_TRACE (if set)."""
    path = os.environ.get("TB_TRACE")
    if not path:
        return
    line = json.dumps({"fleet": os.environ.get("TB_FLEET", ""), "start": wall0,
                       "times": [round(wall0 + t, 4) for t in times],
                       "completed": res["completed"], "error": res["error"]})
    with _trace_lock, open(path, "a") as f:
        f.write(line + "\n")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def cmd_bench(a):
    runs = [stream_completion(a.url, a.prompt, a.max_tokens) for _ in range(a.runs)]
    for i, r in enumerate(runs, 1):
        print(f"client: run {i}: {r['chunks']} chunks, ttft {r['ttft_s']}, decode "
              f"{r.get('decode_tok_s')} tok/s, error {r['error']}", file=sys.stderr)
    texts = {r["text"] for r in runs}
    return {
        "runs": runs,
        "ok": all(r["completed"] for r in runs),
        "identical_texts": len(texts) == 1,
        "median_decode_tok_s": median([r.get("decode_tok_s") for r in runs]),
        "median_e2e_tok_s": median([r["e2e_tok_s"] for r in runs]),
        "median_ttft_s": median([r["ttft_s"] for r in runs]),
        "text": runs[0]["text"] if runs else None,
    }


def cmd_stream(a):
    return stream_completion(a.url, a.prompt, a.max_tokens, a.progress)


def cmd_load(a):
    deadline = time.monotonic() + a.seconds
    results, lock = [], threading.Lock()

    def client(i):
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            r = stream_completion(a.url, a.prompt, a.max_tokens, timeout=120)
            r = {"client": i, "start_s": t0 - started, "completed": r["completed"],
                 "chunks": r["chunks"], "error": r["error"], "seconds": r["seconds"],
                 "text": r["text"]}
            with lock:
                results.append(r)
            if not r["completed"]:
                time.sleep(0.5)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r["completed"]]
    return {"requests": len(results), "completed": len(ok), "failed": len(results) - len(ok),
            "errors": sorted({r["error"] for r in results if r["error"]}),
            "tokens": sum(r["chunks"] for r in ok),
            "tokens_per_s": sum(r["chunks"] for r in ok) / a.seconds,
            "distinct_texts": len({r["text"] for r in ok}),
            "results": results}


STEP_RE = re.compile(r'^shoal_stage_step_seconds_(sum|count)\{(.*)\} (\S+)$')
HOP_RE = re.compile(r'^shoal_hop_send_seconds_(sum|count)\{(.*)\} (\S+)$')
LABEL_RE = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text):
    """Stage step and hop send sums/counts from a node's /metrics, keyed by their labels."""
    out = {"stage_step": {}, "hop_send": {}}
    for line in text.splitlines():
        for key, rx in (("stage_step", STEP_RE), ("hop_send", HOP_RE)):
            m = rx.match(line)
            if m:
                labels = dict(LABEL_RE.findall(m.group(2)))
                name = "|".join(f"{k}={v}" for k, v in sorted(labels.items()))
                out[key].setdefault(name, {})[m.group(1)] = float(m.group(3))
    return out


def get(url, path, timeout):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return body if resp.status == 200 else None
    finally:
        conn.close()


def cmd_poll(a):
    lock = threading.Lock()
    fleet = os.environ.get("TB_FLEET", "")

    def write(name, obj):
        with lock, open(os.path.join(a.out_dir, name), "a") as f:
            f.write(json.dumps(obj) + "\n")

    def node(url):
        while True:
            t0 = time.time()
            try:
                view = get(url, "/v1/cluster", a.interval)
                if view:
                    write("cluster.jsonl", {"t": t0, "fleet": fleet, "url": url,
                                            "view": json.loads(view)})
                text = get(url, "/metrics", a.interval)
                if text:
                    write("metrics.jsonl", {"t": t0, "fleet": fleet, "url": url,
                                            **parse_metrics(text)})
            except Exception:  # noqa: BLE001 -- a node may be down, paused or cut off
                pass
            time.sleep(max(0.0, a.interval - (time.time() - t0)))

    threads = [threading.Thread(target=node, args=(u,), daemon=True) for u in a.urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    poll = sub.add_parser("poll")
    poll.add_argument("out_dir")
    poll.add_argument("urls", nargs="+")
    poll.add_argument("--interval", type=float, default=1.0)
    for name in ("bench", "stream", "load"):
        s = sub.add_parser(name)
        s.add_argument("url")
        s.add_argument("--max-tokens", type=int, default=64)
        s.add_argument("--prompt", default=DEFAULT_PROMPT)
        if name == "bench":
            s.add_argument("--runs", type=int, default=5)
        if name == "stream":
            s.add_argument("--progress")
        if name == "load":
            s.add_argument("--clients", type=int, default=4)
            s.add_argument("--seconds", type=float, default=30)
    a = p.parse_args()
    if a.cmd == "poll":
        cmd_poll(a)
        return
    out = {"bench": cmd_bench, "stream": cmd_stream, "load": cmd_load}[a.cmd](a)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
