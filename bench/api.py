"""HTTP API benchmark: ``maip-ledger serve`` on loopback, a separate load-generator
process with 64 connections.

``run(quick)`` prints:

1. executed orchestrations/s of the demo 3-step scripted workflow (llm → tool →
   decision), from request to completed: each request is ``POST /v1/orchestrations/
   execute`` with ``Prefer: wait=30``, answered when the orchestration has ended;
2. ``GET /v1/receipts/{id}`` requests/s over the receipts those runs produced: just
   issued, then after a restart.

Both report p50 and p99 latency. Quick mode runs a few seconds each.

The server keeps the receipts it issues in memory (up to 65,536), so a GET right after
the execute run is answered from that cache without a ledger read or a proof: the
first GET figure is that case (what a client fetching what it just ran sees). The
server is then restarted on the same data for the second GET run, which cycles through
up to 20,000 receipt ids in order: its first pass asks for each receipt for the first
time, and the server reads it from the ledger and builds its proof, then caches the
answer; later passes are served from that cache. That line says how many requests were
first fetches.

The load generator is ``wrk`` (one thread, driven by ``bench/api_wrk.lua``) when it is on
PATH, else a Python aiohttp client in its own process; every figure line names the one
that ran (``MAIP_BENCH_LOADGEN=python`` forces the fallback). Either way a response is
an error unless it is 200 and, for execute, the orchestration's status is
``completed``; socket errors and timeouts are errors too, and the rate counts only the
good responses. With wrk the percentiles cover every response and include wrk's own
coordinated-omission correction; the Python client's cover the good ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
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
_WRK_SCRIPT = Path(__file__).with_name("api_wrk.lua")
#: Receipt ids kept from the execute run for the GET run.
_RECEIPTS = 20_000
#: Requests slower than this count as errors (wrk's --timeout): execute waits up to 30 s.
_TIMEOUT = {"execute": "45s", "receipts": "10s"}
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


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
                        if ok:
                            state = json.loads(data)
                            ok = state["status"] == "completed"
                            if ok and len(receipts) < _RECEIPTS:
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


def _python_generate(
    url: str, headers: dict[str, str], mode: str, seconds: float, body: Any
) -> dict[str, Any]:
    """Run the Python load generator in its own process; returns its JSON result."""
    args = json.dumps(
        {"url": url, "headers": headers, "mode": mode, "seconds": seconds, "body": body}
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--load"], input=args, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _wrk_path() -> str | None:
    if os.environ.get("MAIP_BENCH_LOADGEN", "wrk") == "python":
        return None
    return shutil.which("wrk")


def _wrk_version(wrk: str) -> str:
    # wrk -v prints its version line, then the usage, and exits 1.
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout
    m = re.match(r"wrk (\S+)", out)
    return f"wrk {m.group(1)}" if m else "wrk"


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def _wrk_generate(
    url: str, headers: dict[str, str], mode: str, seconds: float, body: Any, *, wrk: str
) -> dict[str, Any]:
    """Run wrk with bench/api_wrk.lua and read its summary and the script's output."""
    with tempfile.TemporaryDirectory(prefix="maip-bench-wrk-") as tmp:
        out = Path(tmp, "out")
        env = {
            **os.environ,
            "MAIP_WRK_MODE": mode,
            "MAIP_WRK_OUT": str(out),
            "MAIP_WRK_THREADS": "1",
            "MAIP_WRK_KEEP": str(_RECEIPTS),
        }
        if mode == "execute":
            Path(tmp, "body.json").write_text(json.dumps(body))
            env |= {
                "MAIP_WRK_PATH": "/v1/orchestrations/execute",
                "MAIP_WRK_BODY_FILE": str(Path(tmp, "body.json")),
            }
        else:
            Path(tmp, "ids").write_text("".join(f"{rid}\n" for rid in body))
            env |= {"MAIP_WRK_PATH": "/v1/receipts/", "MAIP_WRK_IDS_FILE": str(Path(tmp, "ids"))}
        # One thread: wrk then needs a fraction of one core, leaving the rest to the server.
        args = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency"]
        args += [f"--timeout={_TIMEOUT[mode]}", "-s", str(_WRK_SCRIPT)]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        proc = subprocess.run(
            [*args, url], capture_output=True, text=True, env=env, check=False, timeout=seconds + 90
        )
        text = proc.stdout
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({proc.returncode}): {text}{proc.stderr}")
        script = out.read_text().splitlines()
    done = re.search(r"(\d+) requests in " + _TIME, text)
    latency = {
        p: (v, u) for p, v, u in re.findall(r"^\s*(50|99)%\s+" + _TIME + r"\s*$", text, re.M)
    }
    rejected = next((int(x.split()[1]) for x in script if x.startswith("rejected ")), None)
    if done is None or set(latency) != {"50", "99"} or rejected is None:
        raise RuntimeError(f"cannot read wrk's output:\n{text}\n{script[-1:]}")
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    connect, read, write, timeout = (int(x) for x in socket.groups()) if socket else (0, 0, 0, 0)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    # The script's count covers every response that is not a 200 (so also wrk's own
    # "Non-2xx" count); a timeout is a response that arrived too late, counted as bad
    # even when it was a 200; connect, read and write errors never became responses.
    rejected = max(rejected, int(non_2xx.group(1)) if non_2xx else 0)
    requests = int(done.group(1))
    return {
        "count": max(0, requests - rejected - timeout),
        "errors": rejected + timeout + connect + read + write,
        "elapsed": _seconds(done.group(2), done.group(3)),
        "p50": _seconds(*latency["50"]),
        "p99": _seconds(*latency["99"]),
        "receipts": [x.split()[1] for x in script if x.startswith("receipt ")],
    }


def _generate(
    url: str, headers: dict[str, str], mode: str, seconds: float, body: Any
) -> dict[str, Any]:
    """Run the load generator in its own process: wrk if there is one, else Python."""
    wrk = _wrk_path()
    if wrk is None:
        return {**_python_generate(url, headers, mode, seconds, body), "generator": "python"}
    return {**_wrk_generate(url, headers, mode, seconds, body, wrk=wrk), "generator": "wrk"}


def _http(url: str, method: str, body: Any, headers: dict[str, str]) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={**headers, "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _report(name: str, unit: str, r: dict[str, Any], note: str = "") -> None:
    rate = r["count"] / r["elapsed"]
    print(
        f"{name}: {rate:,.0f} {unit}/s ({r['count']} in {r['elapsed']:.1f} s, "
        f"{r['errors']} errors, {CONNECTIONS} connections, {r['generator']}{note}); "
        f"p50 {r['p50'] * 1000:.1f} ms, p99 {r['p99'] * 1000:.1f} ms"
    )


def _serve(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``maip-ledger serve --demo`` on ``data_dir``; the process and its URL."""
    server = subprocess.Popen(
        [str(_SERVER), "serve", "--data-dir", str(data_dir), "--port", "0", "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    return server, server.stdout.readline().split()[-1]


def _stop(server: subprocess.Popen[str]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)


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
        server, url = _serve(data_dir, env)
        try:
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
            wrk = _wrk_path()
            generator = (
                f"{_wrk_version(wrk)}, 1 thread, {_WRK_SCRIPT.name}"
                if wrk
                else "Python aiohttp client (wrk is not on PATH or MAIP_BENCH_LOADGEN=python)"
            )
            print(f"api bench: maip-ledger serve on {url}, demo 3-step scripted workflow")
            print(f"load generator: {generator}")
            executed = _generate(url, headers, "execute", seconds, body)
            _report("executed orchestrations (request -> completed)", "orchestrations", executed)
            receipts = executed["receipts"][:_RECEIPTS]
            if not receipts:
                print("GET /v1/receipts/{id}: skipped, no orchestration completed")
                return
            # Clients mostly fetch the receipts of what they just ran: the server keeps
            # those as it issues them, so no ledger read and no proof is needed.
            recent = _generate(url, headers, "receipts", seconds, receipts)
            _report(
                "GET /v1/receipts/{id}, just issued",
                "requests",
                recent,
                "; answered from the receipts the server keeps as it issues them",
            )
            # A fresh server: none of these receipts is in its memory yet.
            _stop(server)
            server, url = _serve(data_dir, env)
            fetched = _generate(url, headers, "receipts", seconds, receipts)
            first = min(fetched["count"] + fetched["errors"], len(receipts))
            _report(
                "GET /v1/receipts/{id}, after a restart",
                "requests",
                fetched,
                f"; restarted server, {first:,} first fetches (ledger read and proof), "
                f"the other {max(0, fetched['count'] - first):,} repeats from its cache",
            )
        finally:
            _stop(server)


if __name__ == "__main__":
    if sys.argv[1:] == ["--load"]:
        a = json.loads(sys.stdin.read())
        result = asyncio.run(_load(a["url"], a["headers"], a["mode"], a["seconds"], a["body"]))
        sys.stdout.write(json.dumps(result))
    else:
        run(quick="--quick" in sys.argv)
