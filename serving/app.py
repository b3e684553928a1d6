"""The online ranker's HTTP app: `create_app(cfg)`, served by `mmi serve` (uvicorn).

POST /rank    one user against 1..serve_max_items candidates -> items sorted by score, with statuses
POST /items   new items (text, category, image) -> embedded, written to Delta and the online store
GET  /healthz the process is up;  GET /readyz  model loaded and online store reachable (else 503)
GET  /metrics Prometheus text: requests by route and status, latencies, feature-fetch and model time

Errors are `{"detail": reason}` with a 4xx for bad input and 503 while the model or the online store
is unavailable; the model and the store are opened lazily and retried, so the service recovers by
itself when they come back.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import sqlite3
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
import redis
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.datastructures import UploadFile

log = logging.getLogger(__name__)

ROUTES = ("/rank", "/items", "/healthz", "/readyz", "/metrics")
MAX_BODY_BYTES = 8 << 20  # default request body limit (an image upload fits)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
# what an unreachable online store raises (Redis down, SQLite file gone or locked)
UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlite3.Error,
    ConnectionError,
    TimeoutError,
)
Id = Annotated[StrictInt, Field(ge=0, lt=2**63)]


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    item_ids: list[Id] = Field(min_length=1)
    context: dict | None = None  # accepted for callers' bookkeeping; the models do not read it


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: Id
    text: StrictStr
    category: StrictStr = ""
    image: bytes | None = None


class Unavailable(Exception):
    """The model or the online store cannot be used right now (-> 503 with the reason)."""


class Service:
    """What the endpoints share: the config, the model and the online reader (both opened lazily,
    retried after a failure), and the metrics."""

    def __init__(self, cfg, features=None, ranker=None):
        self.cfg = cfg
        self._features, self._ranker = features, ranker
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mmi_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mmi_http_request_seconds",
            "request latency by route",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.fetch_time = Histogram(
            "mmi_feature_fetch_seconds",
            "online feature fetch per /rank (Feast reads + feature math)",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.model_time = Histogram(
            "mmi_model_seconds", "model scoring per /rank", buckets=BUCKETS, registry=self.registry
        )

    def ranker(self):
        if self._ranker is None:
            with self._lock:
                if self._ranker is None:
                    from serving.model import Ranker

                    try:
                        ranker = Ranker.load(self.cfg.model_dir)
                    except (OSError, ValueError, RuntimeError, KeyError) as err:
                        raise Unavailable(f"model not loaded: {err}") from err
                    model, cfg = ranker.model.cfg, self.cfg
                    shape = ("seq_len", "time_slices", "sim_bins")
                    takes, have = ([getattr(c, f) for f in shape] for c in (model, cfg))
                    if takes != have:
                        raise Unavailable(
                            f"model not loaded: it takes {', '.join(shape)} = {takes}; "
                            f"the features have {have}"
                        )
                    self._ranker = ranker
                    log.info("model %s loaded from %s", self._ranker.version, self.cfg.model_dir)
        return self._ranker

    def features(self):
        if self._features is None:
            with self._lock:
                if self._features is None:
                    from serving.online import OnlineFeatures

                    try:
                        self._features = OnlineFeatures.from_config(self.cfg)
                    except Exception as err:  # noqa: BLE001  (registry missing, store not applied)
                        raise Unavailable(f"feature store not ready: {err}") from err
        return self._features

    def check_store(self) -> None:
        """One read from the online store (an unknown user's history)."""
        try:
            self.features().history(0)
        except UNREACHABLE as err:
            raise Unavailable(f"online store unreachable: {err}") from err


def rank(service: Service, request: RankRequest) -> dict:
    """Score and sort the candidates; statuses say what each score could use."""
    if len(request.item_ids) > service.cfg.serve_max_items:
        raise HTTPException(
            413,
            f"too many candidates: {len(request.item_ids)} > "
            f"{service.cfg.serve_max_items} (serve_max_items)",
        )
    ranker = service.ranker()
    started = time.perf_counter()
    try:
        features = service.features().fetch(request.user_id, request.item_ids)
    except UNREACHABLE as err:
        raise Unavailable(f"online store unreachable: {err}") from err
    scored = time.perf_counter()
    service.fetch_time.observe(scored - started)
    scores = ranker.score(features)
    service.model_time.observe(time.perf_counter() - scored)
    used = ranker.used(features)
    if not ranker.known_users([request.user_id])[0]:
        user_status = "unknown_user"  # no ID embedding; its history (if any) is still used
    else:
        user_status = "ok" if features.hist_len else "cold"  # cold: empty history
    order = np.argsort(-scores, kind="stable")
    return {
        "user_id": request.user_id,
        "user_status": user_status,
        "hist_len": features.hist_len,
        "model": ranker.version,
        "items": [
            {
                "item_id": int(features.item_ids[i]),
                "score": float(scores[i]),
                "status": _item_status(features.found[i], used[i]["id"]),
                "used": used[i],
            }
            for i in order
        ],
    }


def _item_status(embedded: bool, known: bool) -> str:
    if not embedded:
        return "item_not_embedded"  # scored on its ID / category features only
    return (
        "ok" if known else "unknown_item"
    )  # unknown: no ID embedding, scored on content + category


async def _new_items(request: Request) -> list[dict]:
    """The items of a POST /items body: multipart (one item; fields item_id, text, category, file
    image) or JSON (one item or {"items": [...]}, image as base64)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        image = form.get("image")
        raw: dict[str, Any] = {k: v for k, v in form.items() if k != "image"}
        if "item_id" in raw:
            raw["item_id"] = _int(raw["item_id"])
        if image is not None and not isinstance(image, UploadFile):
            raise HTTPException(422, "image: expected a file part")
        raw["image"] = await image.read() if image is not None else None
        rows = [raw]
    elif ctype.startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HTTPException(400, f"malformed JSON: {err}") from err
        items = body.get("items") if isinstance(body, dict) and "items" in body else [body]
        if not isinstance(items, list) or not items or not all(isinstance(r, dict) for r in items):
            raise HTTPException(422, 'expected an item object or {"items": [item, ...]}')
        rows = [{**r, "image": _b64(r.get("image"))} for r in items]
    else:
        raise HTTPException(415, "send multipart/form-data or application/json")
    try:
        return [NewItem(**row).model_dump() for row in rows]
    except ValidationError as err:
        raise HTTPException(422, _reasons(err.errors())) from err


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value  # left to the validation, which names the field


def _b64(value) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPException(422, "image: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise HTTPException(422, f"image: invalid base64: {err}") from err


def _reasons(errors) -> str:
    """Validation errors as one line: 'field: message; ...'."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
        for e in errors[:5]
    )


class _Guard:
    """ASGI middleware: request body limit (413) and the request count / latency metrics."""

    def __init__(self, app, service: Service, max_body_bytes: int):
        self.app, self.service, self.max_body = app, service, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status, seen = [500], [0]
        started = time.perf_counter()

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def receiving():
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.max_body:
                raise HTTPException(413, f"request body over {self.max_body} bytes")
            return message

        length = dict(scope["headers"]).get(b"content-length", b"")
        try:
            if length.isdigit() and int(length) > self.max_body:
                await JSONResponse({"detail": f"request body over {self.max_body} bytes"}, 413)(
                    scope, receive, sending
                )
            else:
                await self.app(scope, receiving, sending)
        finally:
            self.service.requests.labels(route, str(status[0])).inc()
            self.service.latency.labels(route).observe(time.perf_counter() - started)


def create_app(cfg, *, features=None, ranker=None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ranker app over `cfg`. `features` (an OnlineFeatures) and `ranker` (a serving.model.Ranker)
    default to the online store of `cfg` and the promoted model at `cfg.model_dir`."""
    service = Service(cfg, features, ranker)

    @asynccontextmanager
    async def lifespan(app):
        try:  # warm up: a failure here is retried per request and reported by /readyz
            await run_in_threadpool(service.ranker)
            await run_in_threadpool(service.features)
        except Unavailable as err:
            log.warning("not ready yet: %s", err)
        yield

    app = FastAPI(title="mminterest ranker", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(_Guard, service=service, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        for e in exc.errors():
            if e["type"] == "json_invalid":
                return JSONResponse(
                    {
                        "detail": f"malformed JSON at character {e['loc'][-1]}: "
                        f"{e.get('ctx', {}).get('error', e['msg'])}"
                    },
                    400,
                )
        return JSONResponse({"detail": _reasons(exc.errors())}, 422)

    @app.exception_handler(Unavailable)
    async def unavailable(request, exc):
        return JSONResponse({"detail": str(exc)}, 503)

    @app.post("/rank")
    def post_rank(request: RankRequest) -> JSONResponse:
        return JSONResponse(rank(service, request))  # plain JSON types: no response validation

    @app.post("/items")
    async def post_items(request: Request, authorization: str | None = Header(None)) -> dict:
        given = (authorization or "").removeprefix("Bearer ").encode()
        if not authorization or not hmac.compare_digest(given, cfg.serve_token.encode()):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        items = await _new_items(request)
        from mminterest.tables import CommitConflict
        from serving.new_items import NewItemError, add_items  # heavy (encoders): on first use

        try:
            added = await run_in_threadpool(  # the encoder is loaded once per process
                lambda: add_items(cfg, items, store=service.features().store)
            )
        except NewItemError as err:
            raise HTTPException(422, str(err)) from err
        except UNREACHABLE as err:
            raise Unavailable(f"online store unreachable: {err}; nothing was written") from err
        except CommitConflict as err:
            raise Unavailable(f"{err}; nothing was written, retry later") from err
        service.features().forget(
            [item["item_id"] for item in added]
        )  # next /rank: the new vectors
        return {"added": added}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        ranker = service.ranker()
        service.check_store()
        return {"status": "ready", "model": ranker.version, "online_store": cfg.online_store}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    return app
