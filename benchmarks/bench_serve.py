"""`eve serve` under load: mixed short and long prompts, batched vs unbatched, this revision vs another.

    .venv/bin/python benchmarks/bench_serve.py                          # this checkout, tiny random EVE
    .venv/bin/python benchmarks/bench_serve.py --baseline 1a7197a       # ... side by side with a revision
    .venv/bin/python benchmarks/bench_serve.py --model-dir runs/x/final --requests 200 --concurrency 16

A bounded load test on loopback only: it starts the real server (uvicorn subprocess on 127.0.0.1)
once per (revision, batch size) and round, sends the same ``--requests`` requests from
``--concurrency`` client threads, and prints requests/s and latency p50/p95 overall and per kind
(the median over ``--rounds`` interleaved rounds, so that a machine shared with other work drifts
into every configuration alike), then the ratios measured in this one run: batched/unbatched for
each revision, and this revision/baseline for each batch size.

The mix: every ``--long-every``-th request is a long text prompt (``--long-prompt-tokens`` tokens,
close to the tiny model's 512-token context), the others are short image+question requests; all
ask for ``--max-tokens`` tokens with ``ignore_eos`` (so every request does the same work on every
revision; a server that does not know ``ignore_eos`` ignores it, and the mean completion length is
printed so that the work can be compared). The baseline revision runs from ``git archive REF`` in a
temporary directory with the same checkpoint.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


WORDS = "the quick brown fox jumps over a lazy dog near the river bank".split()


def long_text(model_dir: Path, target_tokens: int, offset: int) -> str:
    """Text of about ``target_tokens`` tokens for the checkpoint's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    words: list[str] = []
    while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < target_tokens:
        words += [WORDS[(offset + len(words) + step) % len(WORDS)] for step in range(16)]
    return " ".join(words)


def mixed_payloads(model_dir: Path, count: int, max_tokens: int, long_every: int, long_prompt_tokens: int) -> list[tuple[str, dict]]:
    """``(kind, payload)`` pairs: a long text prompt every ``long_every`` requests, short image questions otherwise."""
    from PIL import Image

    payloads = []
    for index in range(count):
        if long_every and index % long_every == long_every - 1:
            messages = [{"role": "user", "content": f"Summarise: {long_text(model_dir, long_prompt_tokens, index)}"}]
            kind = "long"
        else:
            buffer = io.BytesIO()
            Image.new("RGB", (32 + index % 5 * 8, 24), (index * 37 % 256, 90, 160)).save(buffer, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            messages = [{"role": "user", "content": [
                {"type": "text", "text": "Describe this image."}, {"type": "image_url", "image_url": {"url": url}}]}]
            kind = "short"
        payloads.append((kind, {"messages": messages, "max_tokens": max_tokens, "ignore_eos": True}))
    return payloads


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(url: str, payloads: list[tuple[str, dict]], concurrency: int, timeout_seconds: float) -> dict[str, float]:
    import httpx

    with httpx.Client(timeout=timeout_seconds) as client:
        for _, payload in payloads[:2]:  # warm-up
            client.post(f"{url}/v1/chat/completions", json=payload).raise_for_status()

        def one(item: tuple[str, dict]) -> tuple[str, float, int]:
            kind, payload = item
            started = time.perf_counter()
            response = client.post(f"{url}/v1/chat/completions", json=payload)
            response.raise_for_status()
            return kind, time.perf_counter() - started, response.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, payloads))
        wall = time.perf_counter() - started
    row = {"requests_per_second": len(payloads) / wall,
           "mean_completion_tokens": statistics.mean(tokens for _, _, tokens in results)}
    for kind in ("all", "short", "long"):
        latencies = [seconds for k, seconds, _ in results if kind in ("all", k)]
        if latencies:
            row[f"{kind}_p50_ms"] = 1000 * statistics.median(latencies)
            row[f"{kind}_p95_ms"] = 1000 * _percentile(latencies, 0.95)
    return row


def checkout_of(ref: str, destination: Path) -> Path:
    """The repository at ``ref`` (git archive: tracked files only) in ``destination``."""
    destination.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="checkpoint (default: a tiny random EVE)")
    parser.add_argument("--baseline", default=None, help="git revision to compare with (e.g. the commit before a change)")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--long-every", type=int, default=4, help="every Nth request is a long prompt (0: none)")
    parser.add_argument("--long-prompt-tokens", type=int, default=380,
                        help="length of a long prompt's text (the chat template adds ~40); keep it within the context")
    parser.add_argument("--timeout-seconds", type=float, default=600.0, help="per request; the run is bounded")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; medians are reported")
    args = parser.parse_args()

    from tests.fixtures.eve_serve import EveServer
    from tests.fixtures.tiny_eve import write_tiny_eve_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = args.model_dir or write_tiny_eve_checkpoint(scratch / "tiny-eve")
        payloads = mixed_payloads(Path(model_dir), args.requests, args.max_tokens, args.long_every, args.long_prompt_tokens)
        revisions = {"this": REPO_ROOT}
        if args.baseline:
            revisions = {f"baseline {args.baseline}": checkout_of(args.baseline, scratch / "baseline"), **revisions}
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_index in range(args.rounds):
            for revision, checkout in revisions.items():
                for batch in (1, args.max_batch_size):
                    server = EveServer(Path(model_dir), scratch / f"server-{round_index}-{batch}-{len(runs)}.log",
                                       ["--max-batch-size", str(batch)], checkout=checkout)
                    server.start()
                    try:
                        runs.setdefault((revision, batch), []).append(
                            measure(server.url, payloads, args.concurrency, args.timeout_seconds))
                    finally:
                        server.stop()
        rows = {config: {key: statistics.median(run[key] for run in measured) for key in measured[0]}
                for config, measured in runs.items()}

    kinds = sum(1 for kind, _ in payloads if kind == "long")
    print(f"{args.requests} requests ({kinds} long of ~{args.long_prompt_tokens} text tokens, {args.requests - kinds} short "
          f"image questions), {args.concurrency} concurrent clients, max_tokens {args.max_tokens}, loopback, "
          f"median of {args.rounds} interleaved round(s)")
    header = f"{'revision':<22}{'batch':>6}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'short p50':>11}{'short p95':>11}" \
             f"{'long p50':>10}{'long p95':>10}{'tokens':>8}"
    print(header)
    for (revision, batch), row in rows.items():
        print(f"{revision:<22}{batch:>6}{row['requests_per_second']:>8.2f}{row['all_p50_ms']:>9.0f}{row['all_p95_ms']:>9.0f}"
              f"{row.get('short_p50_ms', 0):>11.0f}{row.get('short_p95_ms', 0):>11.0f}"
              f"{row.get('long_p50_ms', 0):>10.0f}{row.get('long_p95_ms', 0):>10.0f}{row['mean_completion_tokens']:>8.1f}")

    def ratios(label: str, new: dict[str, float], old: dict[str, float]) -> None:
        parts = [f"throughput x{new['requests_per_second'] / old['requests_per_second']:.2f}"]
        for key in ("all_p50_ms", "all_p95_ms", "short_p50_ms", "short_p95_ms", "long_p95_ms"):
            if key in new and key in old:
                parts.append(f"{key.removesuffix('_ms').replace('all_', '')} x{new[key] / old[key]:.2f}")
        print(f"{label}: {', '.join(parts)}")

    for revision in revisions:
        ratios(f"{revision}: batched/unbatched", rows[(revision, args.max_batch_size)], rows[(revision, 1)])
    if args.baseline:
        baseline = next(iter(revisions))
        for batch in (1, args.max_batch_size):
            ratios(f"this/baseline at batch {batch}", rows[("this", batch)], rows[(baseline, batch)])


if __name__ == "__main__":
    main()
