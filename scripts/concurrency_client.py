#!/usr/bin/env python3
"""C concurrent streamed chat completions against an OpenAI-compatible server; one JSON line.

    scripts/concurrency_client.py URL C TOKENS PROMPTS.jsonl

Every request is greedy (temperature 0), asks for TOKENS tokens and streams with
`stream_options.include_usage`, so the token count is the server's own. Prompts cycle through
the file's "prompt" fields, each with a request number appended so no two requests are
the same text. Reports: requests that completed with 200, other statuses (or the error),
aggregate completion tokens per second (all tokens over the wall time from the first send to
the last answer), and p50 / p99 time to first token. Standard library only.
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse


def one(url, body, out):
    """Sends one streamed request; fills `out` with status, ttft, tokens, end."""
    u = urllib.parse.urlparse(url)
    start = time.monotonic()
    out["start"] = start
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        out["status"] = resp.status
        if resp.status != 200:
            out["error"] = resp.read(300).decode("utf-8", "replace")
            return
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                out["status"] = "error-in-stream"
                out["error"] = str(chunk["error"])[:300]
                return
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content") and "ttft" not in out:
                    out["ttft"] = time.monotonic() - start
            usage = chunk.get("usage")
            if usage:
                out["tokens"] = usage.get("completion_tokens", 0)
        out["end"] = time.monotonic()
    except Exception as e:  # a refused or dropped connection is a failure, not a crash
        out["status"] = "exception"
        out["error"] = repr(e)[:300]


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    url, c, tokens, prompts_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(prompts_file) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    results = [{} for _ in range(c)]
    threads = []
    for i in range(c):
        body = {
            "model": "any",
            "messages": [{"role": "user", "content": f"{prompts[i % len(prompts)]} ({i})"}],
            "max_tokens": tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        t = threading.Thread(target=one, args=(url, body, results[i]))
        threads.append(t)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r.get("status") == 200 and "end" in r]
    failed = {}
    for r in results:
        if not (r.get("status") == 200 and "end" in r):
            key = str(r.get("status"))
            failed[key] = failed.get(key, 0) + 1
    errors = sorted({r["error"] for r in results if "error" in r})[:3]
    wall = (max(r["end"] for r in ok) - min(r["start"] for r in results)) if ok else None
    total = sum(r.get("tokens", 0) for r in ok)
    ttfts = [r["ttft"] for r in ok if "ttft" in r]
    print(json.dumps({
        "concurrency": c,
        "completed": len(ok),
        "failed": failed,
        "errors": errors,
        "tokens": total,
        "wall_s": round(wall, 3) if wall else None,
        "tok_per_s": round(total / wall, 2) if wall else 0.0,
        "ttft_p50_s": round(pct(ttfts, 50), 3) if ttfts else None,
        "ttft_p99_s": round(pct(ttfts, 99), 3) if ttfts else None,
    }))


if __name__ == "__main__":
    main()
