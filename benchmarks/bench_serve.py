"""Classroom serving benchmark: N students asking `phiflash serve` at once vs one at a time.

Starts ``phiflash serve`` (a subprocess on a free 127.0.0.1 port) and sends the same N chat
requests twice, streamed, temperature 0: first one after another (each student alone), then all
at once (a classroom). For each request: time to the first token, total latency, tokens (the
streamed content events; usage where the server reports it). Aggregate tok/s = all tokens over
the wall time of the phase. The ratio "together / alone" is measured in the same run.

On a .gguf the server generates one request at a time and queues the rest, so the aggregate
stays at the single-stream rate and the latency of the k-th student grows with k; on MLX the
server decodes concurrent requests in one batch.

    python benchmarks/bench_serve.py --model weights/phiflash-tutor-Q8_0.gguf --students 4
    python benchmarks/bench_serve.py --random-sambay q4_0 --max-tokens 64   # full-size, random
    python benchmarks/bench_serve.py --model weights/phiflash-tutor        # MLX, batched
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import cpu_name

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
QUESTIONS = [
    "What is 47 + 38?",
    "Compute 12 * 7.",
    "Solve for x: 5x - 9 = 31.",
    "What is 250 - 175?",
    "What is 36 / 4?",
    "Compute 15 * 15.",
    "What is 1000 - 1?",
    "Solve for y: 3y + 4 = 19.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model: str, args, log_path: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "phiflash.cli", "serve", "--model", model, "--port", str(port)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.one_at_a_time:
        cmd += ["--one-at-a-time"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc, log, port
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server not up in 600 s")


def ask(port: int, question: str, max_tokens: int) -> dict:
    """One streamed request: first-token time, total time, tokens, finish reason."""
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(HOST, port, timeout=3600)
    c.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"server answered {r.status}: {r.read()[:300]!r}")
    first, events, usage, finish = None, 0, None, None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        event = json.loads(line[5:])
        usage = event.get("usage") or usage
        for ch in event.get("choices", []):
            if ch.get("delta", {}).get("content") is not None:  # "" too: a token may be empty
                events += 1
                first = first or time.perf_counter()
            finish = ch.get("finish_reason") or finish
    end = time.perf_counter()
    c.close()
    tokens = (usage or {}).get("completion_tokens") or events
    return {
        "start": t0,
        "end": end,
        "ttft": (first or end) - t0,
        "latency": end - t0,
        "tokens": tokens,
        "finish": finish,
    }


def phase(port: int, questions: list[str], max_tokens: int, together: bool) -> dict:
    results: list = [None] * len(questions)
    if together:
        barrier = threading.Barrier(len(questions))

        def run(i):
            barrier.wait()
            results[i] = ask(port, questions[i], max_tokens)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(questions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i, q in enumerate(questions):
            results[i] = ask(port, q, max_tokens)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    lat = sorted(r["latency"] for r in results)
    return {
        "aggregate_tps": tokens / wall,
        "wall_s": wall,
        "tokens": tokens,
        "latency_s": lat,
        "latency_median_s": statistics.median(lat),
        "ttft_s": sorted(r["ttft"] for r in results),
        "finish": [r["finish"] for r in results],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model dir or .gguf to serve")
    p.add_argument(
        "--random-sambay",
        choices=["q4_0", "q8_0"],
        help="write a full-size random SambaY GGUF of this type and serve it",
    )
    p.add_argument("--students", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, help="server threads (GGUF)")
    p.add_argument("--rounds", type=int, default=3, help="alone/together rounds (medians)")
    p.add_argument("--one-at-a-time", action="store_true", help="MLX: no batching")
    p.add_argument("--workdir", type=Path, help="where the random GGUF goes (default: a temp dir)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if (args.model is None) == (args.random_sambay is None):
        p.error("give exactly one of --model and --random-sambay")
    if min(args.students, args.max_tokens, args.rounds) < 1:
        p.error("--students, --max-tokens and --rounds must be at least 1")

    tmp = tempfile.TemporaryDirectory()
    work = args.workdir or Path(tmp.name)
    model = args.model
    if args.random_sambay:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_gguf_cpu import write_sambay

        path = work / f"sambay-random-{args.random_sambay}.gguf"
        if not path.exists():
            t = time.perf_counter()
            write_sambay(path, args.random_sambay)
            print(f"wrote {path.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        model = str(path)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.students)]
    proc, log, port = start_server(model, args, work / "server.log")
    try:
        ask(port, "What is 1 + 1?", 8)  # warm-up
        rounds = []  # alternating, so a slow spell of a shared host hits both modes alike
        for _ in range(args.rounds):
            rounds.append(
                {
                    "alone": phase(port, questions, args.max_tokens, together=False),
                    "together": phase(port, questions, args.max_tokens, together=True),
                }
            )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    res = {
        "model": Path(model).name,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "students": args.students,
        "max_tokens": args.max_tokens,
        "rounds": rounds,
        "aggregate_ratio": statistics.median(
            r["together"]["aggregate_tps"] / r["alone"]["aggregate_tps"] for r in rounds
        ),
    }
    # the round whose ratio is the median stands for the run in the table
    mid = sorted(rounds, key=lambda r: r["together"]["aggregate_tps"] / r["alone"]["aggregate_tps"])
    res["alone"], res["together"] = mid[len(mid) // 2]["alone"], mid[len(mid) // 2]["together"]
    together = res["together"]
    print(
        f"{res['model']} on {res['cpu']} ({res['cores']} cores), {res['date']}, "
        f"{args.students} students, max_tokens {args.max_tokens}"
    )
    print(
        f"{'':9} {'tok/s (all)':>11} {'wall s':>7} {'latency s min/med/max':>23} "
        f"{'1st token s min/max':>20}"
    )
    for name in ("alone", "together"):
        r = res[name]
        lat = r["latency_s"]
        print(
            f"{name:9} {r['aggregate_tps']:11.1f} {r['wall_s']:7.1f} "
            f"{lat[0]:7.2f}/{r['latency_median_s']:6.2f}/{lat[-1]:7.2f} "
            f"{r['ttft_s'][0]:9.2f}/{r['ttft_s'][-1]:8.2f}"
        )
    ratios = [r["together"]["aggregate_tps"] / r["alone"]["aggregate_tps"] for r in rounds]
    print(f"rounds: together / alone = {', '.join(f'{x:.2f}' for x in ratios)}")
    print(
        f"aggregate together / alone (median of rounds): {res['aggregate_ratio']:.2f}x; finish "
        f"reasons "
        f"{together['finish']}"
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
