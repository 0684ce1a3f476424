"""``eve serve MODEL_DIR``: an OpenAI-compatible chat-completions server for a local checkpoint."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eve_model.server import ServeSettings, serve

    settings = ServeSettings(
        model_dir=Path(args.model_dir),
        model_id=args.model_id,
        host=args.host,
        port=args.port,
        max_request_bytes=args.max_request_bytes,
        allowed_image_root=Path(args.allowed_image_root) if args.allowed_image_root else None,
        max_batch_size=args.max_batch_size,
        device=args.device,
    )
    if not (settings.model_dir / "config.json").is_file():
        print(f"eve serve: {settings.model_dir} is not a model directory (no config.json)")
        return 2
    serve(settings)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from eve_model.server import DEFAULT_MAX_REQUEST_BYTES

    parser = subparsers.add_parser(
        "serve",
        help="serve a checkpoint with an OpenAI-compatible API",
        description="Serve MODEL_DIR at /v1/chat/completions, /v1/models and /health.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="checkpoint directory (save_pretrained layout)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="larger request bodies are refused with 413")
    parser.add_argument("--allowed-image-root", default=None,
                        help="directory that images given by path must lie in (default: path images disabled)")
    parser.add_argument("--model-id", default=None, help="model name reported by the API (default: directory name)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="most concurrent requests generated together")
    parser.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda")
    parser.set_defaults(func=_run)
