"""`eve serve` throughput and latency with concurrent clients, batched vs unbatched, in one run.

    .venv/bin/python benchmarks/bench_serve.py                      # tiny random EVE checkpoint
    .venv/bin/python benchmarks/bench_serve.py --model-dir runs/x/final --requests 200 --concurrency 16

Starts the real server (uvicorn subprocess on loopback) twice: with ``--max-batch-size 1`` and with
``--max-batch-size B``, sends the same image requests from C client threads to each, and prints
requests/s and latency p50/p95 side by side with the batched/unbatched ratios.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def image_payloads(count: int, max_tokens: int) -> list[dict]:
    from PIL import Image

    payloads = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (32 + index % 5 * 8, 24), (index * 37 % 256, 90, 160)).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        payloads.append({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe this image."}, {"type": "image_url", "image_url": {"url": url}}]}],
            "max_tokens": max_tokens})
    return payloads


def measure(url: str, payloads: list[dict], concurrency: int) -> dict[str, float]:
    import httpx

    with httpx.Client(timeout=300) as client:
        client.post(f"{url}/v1/chat/completions", json=payloads[0]).raise_for_status()  # warm-up

        def one(payload: dict) -> float:
            started = time.perf_counter()
            client.post(f"{url}/v1/chat/completions", json=payload).raise_for_status()
            return time.perf_counter() - started

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            latencies = sorted(pool.map(one, payloads))
        wall = time.perf_counter() - started
    return {
        "requests_per_second": len(payloads) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="checkpoint (default: a tiny random EVE)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    from tests.fixtures.eve_serve import EveServer
    from tests.fixtures.tiny_eve import write_tiny_eve_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or write_tiny_eve_checkpoint(Path(scratch) / "tiny-eve")
        payloads = image_payloads(args.requests, args.max_tokens)
        rows = {}
        for label, batch in [("unbatched (batch 1)", 1), (f"batched (batch {args.max_batch_size})", args.max_batch_size)]:
            server = EveServer(Path(model_dir), Path(scratch) / f"server-{batch}.log", ["--max-batch-size", str(batch)])
            server.start()
            try:
                rows[label] = measure(server.url, payloads, args.concurrency)
            finally:
                server.stop()

    print(f"{args.requests} requests, {args.concurrency} concurrent clients, max_tokens {args.max_tokens}")
    print(f"{'server':<24}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for label, row in rows.items():
        print(f"{label:<24}{row['requests_per_second']:>10.2f}{row['p50_ms']:>10.1f}{row['p95_ms']:>10.1f}")
    unbatched, batched = rows.values()
    print(f"batched / unbatched: throughput x{batched['requests_per_second'] / unbatched['requests_per_second']:.2f}, "
          f"p50 x{batched['p50_ms'] / unbatched['p50_ms']:.2f}, p95 x{batched['p95_ms'] / unbatched['p95_ms']:.2f}")


if __name__ == "__main__":
    main()
