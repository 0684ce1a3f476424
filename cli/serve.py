"""``eve serve MODEL_DIR``: an OpenAI-compatible chat-completions server for a local checkpoint.

The API key comes from ``EVE_SERVE_API_KEY`` (preferred: the process list shows ``--api-key``'s value
to every user of the machine) or ``--api-key``; clients send it as ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from eve_model.server import API_KEY_ENV, ServeConfigError, ServeSettings, serve

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    settings = ServeSettings(
        model_dir=Path(args.model_dir),
        model_id=args.model_id,
        host=args.host,
        port=args.port,
        api_key=api_key,
        allow_unauthenticated_remote=args.allow_unauthenticated_remote,
        max_request_bytes=args.max_request_bytes,
        allowed_image_root=Path(args.allowed_image_root) if args.allowed_image_root else None,
        max_batch_size=args.max_batch_size,
        max_queued_requests=args.max_queued_requests,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens,
        max_tokens_limit=args.max_tokens_limit,
        device=args.device,
    )
    if not (settings.model_dir / "config.json").is_file():
        print(f"eve serve: {settings.model_dir} is not a model directory (no config.json)")
        return 2
    try:
        settings.check_exposure()
    except ServeConfigError as exc:
        print(f"eve serve: {exc}")
        return 2
    serve(settings)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from eve_model.server import API_KEY_ENV, DEFAULT_MAX_REQUEST_BYTES

    parser = subparsers.add_parser(
        "serve",
        help="serve a checkpoint with an OpenAI-compatible API",
        description="Serve MODEL_DIR at /v1/chat/completions, /v1/models and /health.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="checkpoint directory (save_pretrained layout)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None,
                        help=f"bearer token required on /v1 (prefer the {API_KEY_ENV} environment variable)")
    parser.add_argument("--allow-unauthenticated-remote", action="store_true",
                        help="serve on a non-loopback address without an API key (anyone who reaches it may use it)")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="larger request bodies are refused with 413")
    parser.add_argument("--allowed-image-root", default=None,
                        help="directory that images given by path must lie in (default: path images disabled)")
    parser.add_argument("--model-id", default=None, help="model name reported by the API (default: directory name)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="most concurrent requests generated together")
    parser.add_argument("--max-queued-requests", type=int, default=64,
                        help="requests that may wait; more get 429 with Retry-After")
    parser.add_argument("--max-batch-prefill-tokens", type=int, default=4096,
                        help="prefill budget of a batch (rows x longest prompt); a longer prefill runs apart")
    parser.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    parser.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda")
    parser.set_defaults(func=_run)
