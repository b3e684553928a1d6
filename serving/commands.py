"""`mmi serve`: the online ranker (uvicorn on cfg.serve_host:cfg.serve_port)."""

from __future__ import annotations


def _serve(args) -> int:
    import torch
    import uvicorn

    from mminterest.config import get_config
    from serving.app import MAX_BODY_BYTES, create_app

    torch.set_num_threads(args.torch_threads)
    cfg = get_config()
    app = create_app(cfg, max_body_bytes=args.max_body_bytes or MAX_BODY_BYTES)
    uvicorn.run(
        app,
        host=args.host or cfg.serve_host,
        port=args.port or cfg.serve_port,
        access_log=args.access_log,
        log_level="info",
    )
    return 0


def register(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="online ranker: POST /rank, POST /items, /healthz, "
        "/readyz, /metrics (model: MMI_MODEL_DIR, store: MMI_ONLINE_STORE)",
    )
    serve.add_argument("--host", help="bind address (default: MMI_SERVE_HOST)")
    serve.add_argument("--port", type=int, help="port (default: MMI_SERVE_PORT)")
    serve.add_argument(
        "--max-body-bytes", type=int, help="larger request bodies get 413 (default: 8 MiB)"
    )
    serve.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads per request (default: %(default)s; concurrent "
        "requests run in parallel, and more threads than free cores stall)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=_serve)
