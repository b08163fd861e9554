"""Bounded load test: N concurrent clients for a few seconds, mixing GET /health with short
chat completions. Fails (exit 1) on any error or when /health p99 is over the limit while
the model is working. Prints requests/s and latency percentiles.

usage: load.py BASE_URL API_KEY MODEL [--clients 32] [--seconds 6] [--gen-clients 4]
"""
import argparse
import asyncio
import sys
import time

import httpx


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("key")
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--gen-clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--health-p99-ms", type=float, default=50.0)
    a = ap.parse_args()

    headers = {"Authorization": "Bearer " + a.key}
    health_ms, gen_ms, errors = [], [], []
    busy_health_ms = []  # /health latencies observed while a generation was running
    running = [0]
    deadline = time.monotonic() + a.seconds
    body = {"model": a.model, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3, "temperature": 0}

    host, port = a.base.split("//", 1)[1].rsplit(":", 1)

    async def health_client(_c):
        # raw keep-alive HTTP/1.1: a light client, so that the numbers measure the server
        reader, writer = await asyncio.open_connection(host, int(port))
        req = ("GET /health HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode()
        try:
            while time.monotonic() < deadline:
                t = time.monotonic()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                dt = (time.monotonic() - t) * 1e3
                if not head.startswith(b"HTTP/1.1 200") or b'"ready":true' not in body:
                    errors.append("health %r" % head[:40])
                health_ms.append(dt)
                if running[0]:
                    busy_health_ms.append(dt)
                await asyncio.sleep(0.01)
        finally:
            writer.close()

    async def gen_client(c):
        while time.monotonic() < deadline:
            t = time.monotonic()
            running[0] += 1
            try:
                r = await c.post(a.base + "/v1/chat/completions", json=body, headers=headers)
            finally:
                running[0] -= 1
            if r.status_code != 200 or not r.json()["choices"][0]["message"]["content"]:
                errors.append("completion %d %s" % (r.status_code, r.text[:200]))
            gen_ms.append((time.monotonic() - t) * 1e3)

    limits = httpx.Limits(max_connections=a.clients + 8)
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=300, limits=limits) as c:
        tasks = [gen_client(c) for _ in range(a.gen_clients)]
        tasks += [health_client(c) for _ in range(a.clients - a.gen_clients)]
        await asyncio.gather(*tasks)
    wall = time.monotonic() - t0
    n = len(health_ms) + len(gen_ms)
    print("load: clients=%d wall_s=%.1f requests=%d req_per_s=%.0f errors=%d"
          % (a.clients, wall, n, n / wall, len(errors)))
    print("load: /health n=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f (while generating: n=%d "
          "p99_ms=%.2f)" % (len(health_ms), pct(health_ms, 50), pct(health_ms, 99),
                            max(health_ms or [0]), len(busy_health_ms), pct(busy_health_ms, 99)))
    print("load: completions n=%d p50_ms=%.0f p99_ms=%.0f"
          % (len(gen_ms), pct(gen_ms, 50), pct(gen_ms, 99)))
    # the server's own view: /health latency histogram from /metrics
    m = httpx.get(a.base + "/metrics", headers=headers).text
    buckets = []
    for line in m.splitlines():
        if line.startswith('s3_http_request_duration_seconds_bucket{route="/health"'):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), int(line.split()[-1])))
    if buckets:
        total = buckets[-1][1]
        p99 = next(le for le, c in buckets if c >= 0.99 * total)
        print("load: /health server-side p99 <= %g ms (histogram of %d requests)"
              % (p99 * 1e3, total))
    ok = True
    if errors:
        print("load: FAIL errors: %s" % errors[:5])
        ok = False
    if not gen_ms or not busy_health_ms:
        print("load: FAIL no completion overlapped the /health traffic")
        ok = False
    elif pct(busy_health_ms, 99) > a.health_p99_ms:
        print("load: FAIL /health p99 %.1f ms > %.0f ms while the model works"
              % (pct(busy_health_ms, 99), a.health_p99_ms))
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
