"""What each hostile upload costs the gateway's preprocessing: CPU time and peak memory, per attack.

    python -m bench.hostile [--runs 3] [--only tiff_150k_pages,png16_6300] [--timeout 60]

Every attack in tests/hostile_uploads.py (all within the default 10 MiB upload limit) is run through
`gateway.preprocess.to_mnist` in a fresh child process, `--runs` times. The child reports the outcome (the
HTTP status it maps to), the CPU time of the calling thread (`time.thread_time`, as a request's) and how far
its peak RSS (VmHWM) rose above the baseline measured in the same child after a normal 60x60 PNG. Baseline
row: that normal upload. Goals: every attack answered with 200 or a 4xx, within 1 s of CPU, and peak RSS
growth within the decoding budget (`gateway.preprocess.DEFAULT_MAX_DECODE_BYTES`) plus 16 MiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL_CPU_S = 1.0

_CHILD = r"""
import json, sys, time
from gateway.preprocess import to_mnist
from gateway.errors import GatewayError
from gateway.settings import Settings
from tests.hostile_uploads import _encode, digit_picture

def peak_mib():  # VmHWM: unlike ru_maxrss, not inherited from the parent across exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

from PIL import Image
Image.init()  # every format's plugin imported up front, as a worker that has served a while has them
to_mnist(_encode(digit_picture(), "PNG"))
data = open(sys.argv[1], "rb").read()
max_pixels = Settings().max_image_pixels
baseline = peak_mib()
started = time.thread_time()
try:
    to_mnist(data, max_pixels=max_pixels)
    status = 200
except GatewayError as exc:
    status = exc.status
except Exception as exc:
    status = 500
cpu = time.thread_time() - started
print(json.dumps({"status": status, "cpu_s": cpu, "rss_growth_mib": peak_mib() - baseline}))
"""


def run_one(path: Path, timeout: float) -> dict:
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "cpu_s": timeout, "rss_growth_mib": float("nan")}
    if out.returncode != 0:
        return {"status": f"crash {out.returncode}", "cpu_s": float("nan"), "rss_growth_mib": float("nan")}
    return json.loads(out.stdout.strip().splitlines()[-1])


def normal_upload_latency(attack: bytes | None, attackers: int, seconds: float) -> list[float]:
    """Wall-clock seconds of normal uploads sent one after another to an app over HTTP (model and store
    doubles) while `attackers` threads keep posting `attack`."""
    import logging
    import threading
    import time

    import requests

    from gateway.app import create_app
    from gateway.settings import Settings
    from tests.fixtures.gateway_server import LiveGateway
    from tests.hostile_uploads import _encode, digit_picture
    from tests.test_gateway_http import ModelDouble, StoreDouble

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the table
    app = create_app(Settings(), model_client=ModelDouble(), store=StoreDouble())
    normal = _encode(digit_picture(), "PNG")
    stop = threading.Event()
    with LiveGateway(app) as gateway:

        def attack_loop() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    session.post(f"{gateway.url}/v1/predict", data=attack, timeout=60)

        threads = [threading.Thread(target=attack_loop) for _ in range(attackers if attack else 0)]
        for thread in threads:
            thread.start()
        latencies = []
        with requests.Session() as session:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.perf_counter()
                assert session.post(f"{gateway.url}/v1/predict", data=normal, timeout=60).status_code == 200
                latencies.append(time.perf_counter() - started)
        stop.set()
        for thread in threads:
            thread.join()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="comma-separated attack names")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a child is killed")
    parser.add_argument("--attackers", type=int, default=4, help="concurrent attack clients in the HTTP part")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each HTTP part")
    args = parser.parse_args(argv)

    from gateway.preprocess import DEFAULT_MAX_DECODE_BYTES
    from tests.hostile_uploads import ATTACKS, _encode, digit_picture

    cases = {"baseline_png_60x60": lambda: _encode(digit_picture(), "PNG"), **ATTACKS}
    if args.only:
        cases = {name: cases[name] for name in args.only.split(",")}
    budget_mib = DEFAULT_MAX_DECODE_BYTES / 2**20
    failed = []
    print(f"{'attack':<26} {'bytes':>10} {'status':>7} {'CPU ms (min-max)':>18} {'RSS +MiB (max)':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in cases.items():
            data = build()
            path = Path(tmp) / name
            path.write_bytes(data)
            results = [run_one(path, args.timeout) for _ in range(args.runs)]
            statuses = sorted({str(r["status"]) for r in results})
            cpu = [r["cpu_s"] * 1000 for r in results]
            rss = max(r["rss_growth_mib"] for r in results)
            print(
                f"{name:<26} {len(data):>10,} {'/'.join(statuses):>7} "
                f"{min(cpu):>8.0f} - {max(cpu):<7.0f} {rss:>15.1f}",
                flush=True,
            )
            ok = all(
                isinstance(r["status"], int) and r["status"] < 500 and r["cpu_s"] <= GOAL_CPU_S
                for r in results
            )
            if not ok or not rss <= budget_mib + 16:
                failed.append(name)
    print(f"\nnormal 60x60 PNG uploads over HTTP, alone and while {args.attackers} clients post each attack:")
    print(f"{'while':<26} {'uploads':>8} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
    for name in (None, "png_700k_chunks", "jpeg_2m_markers", "png16_at_budget", "tiff_150k_pages"):
        attack = ATTACKS[name]() if name else None
        lat = sorted(x * 1000 for x in normal_upload_latency(attack, args.attackers, args.seconds))
        p50, p90 = lat[len(lat) // 2], lat[int(len(lat) * 0.9)]
        label = name or "alone (baseline)"
        print(f"{label:<26} {len(lat):>8} {p50:>8.1f} {p90:>8.1f} {lat[-1]:>8.1f}", flush=True)
    goal_ms = GOAL_CPU_S * 1000
    print(f"\ngoal: status 200 or 4xx, CPU <= {goal_ms:.0f} ms, RSS growth <= {budget_mib:.0f} + 16 MiB")
    if failed:
        print(f"missed the goal: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
