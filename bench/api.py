"""HTTP API benchmark: ``maip-ledger serve`` on loopback, a separate load-generator
process with 64 connections.

``run(quick)`` prints:

1. executed orchestrations/s of the demo 3-step scripted workflow (llm → tool →
   decision), from request to completed: each request is ``POST /v1/orchestrations/
   execute`` with ``Prefer: wait=30``, answered when the orchestration has ended;
2. ``GET /v1/receipts/{id}`` requests/s over the receipts those runs produced.

Both report p50 and p99 latency. Quick mode runs a few seconds each.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

CONNECTIONS = 64
_SERVER = Path(sys.executable).parent / "maip-ledger"


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def _load(
    url: str, headers: dict[str, str], mode: str, seconds: float, body: Any
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    receipts: list[str] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(i: int) -> None:
            nonlocal errors
            n = i
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                if mode == "execute":
                    async with session.post(
                        f"{url}/v1/orchestrations/execute",
                        json=body,
                        headers={"Prefer": "wait=30"},
                    ) as resp:
                        data = await resp.read()
                        ok = resp.status == 200
                        if ok and len(receipts) < 50_000:
                            state = json.loads(data)
                            ok = state["status"] == "completed"
                            receipts.extend(state["receipts"])
                else:
                    rid = body[n % len(body)]
                    n += CONNECTIONS
                    async with session.get(f"{url}/v1/receipts/{rid}") as resp:
                        await resp.read()
                        ok = resp.status == 200
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(CONNECTIONS)))
        elapsed = time.perf_counter() - began
    return {
        "count": len(latencies),
        "errors": errors,
        "elapsed": elapsed,
        "p50": _percentile(latencies, 0.5),
        "p99": _percentile(latencies, 0.99),
        "receipts": receipts,
    }


def _generate(
    url: str, headers: dict[str, str], mode: str, seconds: float, body: Any
) -> dict[str, Any]:
    """Run the load generator in its own process; returns its JSON result."""
    args = json.dumps(
        {"url": url, "headers": headers, "mode": mode, "seconds": seconds, "body": body}
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--load"], input=args, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _http(url: str, method: str, body: Any, headers: dict[str, str]) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={**headers, "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _report(name: str, unit: str, r: dict[str, Any]) -> None:
    rate = r["count"] / r["elapsed"]
    print(
        f"{name}: {rate:,.0f} {unit}/s ({r['count']} in {r['elapsed']:.1f} s, "
        f"{r['errors']} errors, {CONNECTIONS} connections); "
        f"p50 {r['p50'] * 1000:.1f} ms, p99 {r['p99'] * 1000:.1f} ms"
    )


def run(quick: bool) -> None:
    seconds = 4.0 if quick else 20.0
    with tempfile.TemporaryDirectory(prefix="maip-bench-api-") as tmp:
        data_dir = Path(tmp)
        env = {**os.environ, "MAIP_LOG_LEVEL": "warning"}
        made = subprocess.run(
            [
                str(_SERVER),
                "keys",
                "create",
                "--data-dir",
                tmp,
                "--tenant",
                "bench",
                "--scopes",
                "admin",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        key = json.loads(made.stdout)["api_key"]
        server = subprocess.Popen(
            [str(_SERVER), "serve", "--data-dir", str(data_dir), "--port", "0", "--demo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().split()[-1]
            headers = {"X-API-Key": key, "X-Tenant-ID": "demo"}
            bench_key = subprocess.run(
                [
                    str(_SERVER),
                    "keys",
                    "create",
                    "--data-dir",
                    tmp,
                    "--tenant",
                    "demo",
                    "--scopes",
                    "admin",
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            headers["X-API-Key"] = json.loads(bench_key.stdout)["api_key"]
            agents = _http(f"{url}/v1/agents", "GET", None, headers)["items"]
            workflows = _http(f"{url}/v1/workflows", "GET", None, headers)["items"]
            body = {
                "workflow_id": workflows[0]["workflow_id"],
                "agents": [agents[0]["agent_id"]],
                "parameters": {"text": "The checkout page is down"},
            }
            print(f"api bench: maip-ledger serve on {url}, demo 3-step scripted workflow")
            executed = _generate(url, headers, "execute", seconds, body)
            _report("executed orchestrations (request -> completed)", "orchestrations", executed)
            receipts = executed["receipts"][:20_000]
            fetched = _generate(url, headers, "receipts", seconds, receipts)
            _report("GET /v1/receipts/{id}", "requests", fetched)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


if __name__ == "__main__":
    if sys.argv[1:] == ["--load"]:
        a = json.loads(sys.stdin.read())
        result = asyncio.run(_load(a["url"], a["headers"], a["mode"], a["seconds"], a["body"]))
        sys.stdout.write(json.dumps(result))
    else:
        run(quick="--quick" in sys.argv)
