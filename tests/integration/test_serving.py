"""The online ranker against the real app: Feast online store (SQLite and a real redis-server), a tiny
CTR model trained and saved here, synthetic feature tables. Parity: /rank scores equal the model's
scores on features recomputed offline from the Delta tables."""

import base64
import io
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from deltalake import DeltaTable
from fastapi.testclient import TestClient
from PIL import Image

from feature_repo import repo
from feature_repo.store_config import open_store
from infra.procs import free_port
from infra.redis_server import RedisServer
from mminterest import synthetic_tables
from mminterest.candidates import ItemVectors, candidate_features
from mminterest.config import load_config
from serving.app import create_app
from serving.model import Ranker
from training.batch import make_batch
from training.content.encoders import EncoderConfig
from training.models import ModelConfig, build_model
from training.vocab import Vocab

T0 = pd.Timestamp("2021-03-01", tz="UTC")
DIMS = dict.fromkeys(("img", "txt", "fused"), EncoderConfig().dim)  # as POST /items embeds
SMALL = {
    "seq_len": 16,
    "time_slices": 4,
    "sim_bins": 8,
    "serve_max_items": 50,
    "serve_token": "s3cret",
}
ITEMS, IN_VOCAB = 60, 50  # items 51..60 are embedded but unknown to the model
COLD_USER, NEW_USER, MISSING_ITEM = 9, 12_345, 99_999


def _interactions() -> pd.DataFrame:
    rows = synthetic_tables.random_interactions(users=8, items=ITEMS, rows=400, start=T0, seed=5)
    cold = pd.DataFrame(
        {
            "user_id": [COLD_USER] * 3,
            "item_id": [1, 2, 3],
            "event_ts": [T0] * 3,
            "label": np.zeros(3, np.int32),
        }
    )
    return pd.concat([rows, cold], ignore_index=True)  # COLD_USER: known, no positive yet


def _trained(name: str, directory):
    """Model `name` trained a few steps on random features, saved with its vocab in `directory`."""
    rows = _interactions()
    catalogue = pd.DataFrame(
        {
            "item_id": np.arange(1, ITEMS + 1),
            "category": [f"genre{i % 4}|x" for i in range(1, ITEMS + 1)],
        }
    )
    vocab = Vocab.from_frames(rows[rows.item_id <= IN_VOCAB], catalogue)
    cfg = ModelConfig(
        n_users=vocab.n_users,
        n_items=vocab.n_items,
        n_cats=vocab.n_cats,
        emb_dim=8,
        seq_len=SMALL["seq_len"],
        time_slices=SMALL["time_slices"],
        sim_bins=SMALL["sim_bins"],
        mm_dim=DIMS["fused"],
        mlp_dims=(16,),
        att_dims=(8,),
        window=4,
    )
    model = build_model(name, cfg)
    rng = np.random.default_rng(0)
    B, T, L, N, D = 32, cfg.seq_len, cfg.time_slices, cfg.sim_bins, cfg.mm_dim
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(5):
        mask = np.arange(T) < rng.integers(0, T + 1, (B, 1))
        batch = make_batch(
            {
                "user_id": rng.integers(1, 10, B),
                "item_id": rng.integers(1, ITEMS + 1, B),
                "hist_item_ids": rng.integers(1, ITEMS + 1, (B, T)) * mask,
                "hist_mask": mask,
                "sim_img": rng.random((B, T)) * mask,
                "sim_txt": rng.random((B, T)) * mask,
                "sim_mask_img": mask,
                "sim_mask_txt": mask,
                "dist_img": rng.random((B, L, N)) / T,
                "dist_txt": rng.random((B, L, N)) / T,
                "target_mm": rng.standard_normal((B, D)),
                "hist_mm": rng.standard_normal((B, T, D)),
                "label": rng.integers(0, 2, B),
            },
            vocab,
        )
        out = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], batch["label"])
        optimiser.zero_grad()
        (loss + out["aux_loss"]).backward()
        optimiser.step()
    model.save(directory)
    vocab.save(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A content model (ciubm_dmae: reads the fused vectors and the similarity sequences)."""
    return _trained("ciubm_dmae", tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def din_dir(tmp_path_factory):
    """DIN: ids and categories only (the other model the training DAG may promote)."""
    return _trained("din", tmp_path_factory.mktemp("din"))


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


def _home(tmp_path, model_dir, online_store, redis_url="127.0.0.1:6379"):
    """A config over freshly built, applied and materialised feature tables."""
    cfg = load_config(
        home=tmp_path / "mmi",
        online_store=online_store,
        redis_url=redis_url,
        model_dir=model_dir,
        **SMALL,
    )
    synthetic_tables.write_tables(cfg, _interactions(), DIMS, without_img=range(1, ITEMS + 1, 4))
    store = open_store(cfg)
    repo.apply(store)
    repo.materialize(store)
    return cfg, store


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def served(request, tmp_path_factory, model_dir):
    """(cfg, TestClient) of the app over each online store."""
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else "127.0.0.1:1"
    cfg, _ = _home(tmp_path_factory.mktemp(request.param), model_dir, request.param, url)
    with TestClient(create_app(cfg, max_body_bytes=4096)) as client:
        yield cfg, client


def _offline_scores(cfg, user_id, item_ids) -> np.ndarray:
    """The model's probabilities on features recomputed from the Delta tables (latest behaviour
    state, item vectors, feature_math), batched without the ranker's code."""
    states = DeltaTable(cfg.table("user_behaviour")).to_pandas()
    mine = states[states.user_id == user_id].sort_values("event_ts")
    hist = list(mine.hist_item_ids.iloc[-1]) if len(mine) else []
    emb = DeltaTable(cfg.table("item_embeddings")).to_pyarrow_table()
    vectors = ItemVectors.from_rows(
        emb["item_id"].to_numpy(),
        {f: emb[f].to_numpy(zero_copy_only=False) for f in DIMS},
        attrs={"category": emb["category"].to_pylist()},
    )
    f = candidate_features(
        user_id, hist, item_ids, vectors, cfg.seq_len, cfg.time_slices, cfg.sim_bins
    )
    B = len(item_ids)
    cols = {
        "user_id": np.full(B, user_id),
        "item_id": f.item_ids,
        "hist_item_ids": np.tile(f.hist_item_ids, (B, 1)),
        "hist_mask": np.tile(f.hist_mask, (B, 1)),
        "hist_mm": np.tile(f.hist_mm, (B, 1, 1)),
        "category": f.category,
        "hist_category": np.tile(f.hist_category, (B, 1)),
        **{
            k: getattr(f, k)
            for k in (
                "sim_img",
                "sim_txt",
                "sim_mask_img",
                "sim_mask_txt",
                "dist_img",
                "dist_txt",
                "target_mm",
            )
        },
    }
    ranker = Ranker.load(cfg.model_dir)
    with torch.no_grad():
        return torch.sigmoid(ranker.model(make_batch(cols, ranker.vocab))["logit"]).numpy()


def test_rank_scores_match_the_offline_model_and_are_sorted(served):
    cfg, client = served
    users = DeltaTable(cfg.table("user_behaviour")).to_pandas().user_id.unique()
    candidates = list(range(1, 41))
    for user in map(int, users[:3]):
        got = client.post(
            "/rank", json={"user_id": user, "item_ids": candidates, "context": {"page": "home"}}
        )
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["user_status"] == "ok" and body["hist_len"] > 0
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)
        assert sorted(i["item_id"] for i in body["items"]) == candidates
        want = dict(zip(candidates, _offline_scores(cfg, user, candidates)))
        assert max(abs(i["score"] - want[i["item_id"]]) for i in body["items"]) <= 1e-5


def test_cold_start_users_and_items_get_scores_with_a_status(served):
    cfg, client = served
    items = [3, IN_VOCAB + 2, MISSING_ITEM]
    status = {3: "ok", IN_VOCAB + 2: "unknown_item", MISSING_ITEM: "item_not_embedded"}
    for user, user_status in ((NEW_USER, "unknown_user"), (COLD_USER, "cold")):
        body = client.post("/rank", json={"user_id": user, "item_ids": items}).json()
        assert body["user_status"] == user_status and body["hist_len"] == 0
        assert {i["item_id"]: i["status"] for i in body["items"]} == status
        assert all(0 < i["score"] < 1 for i in body["items"])
        want = dict(zip(items, _offline_scores(cfg, user, items)))
        assert all(abs(i["score"] - want[i["item_id"]]) <= 1e-5 for i in body["items"])


@pytest.mark.parametrize(
    "body, status, reason",
    [
        (b'{"user_id": 1, "item_ids": [1,', 400, "malformed JSON"),
        (b'{"user_id": "1", "item_ids": [1]}', 422, "user_id"),
        (b'{"user_id": 1, "item_ids": [1.5]}', 422, "item_ids.0"),
        (b'{"user_id": 1, "item_ids": []}', 422, "item_ids"),
        (b'{"user_id": 1, "item_ids": [1], "typo": 1}', 422, "typo"),
        (b'{"user_id": 1, "item_ids": [-1]}', 422, "item_ids.0"),
        (b'{"user_id": 1, "item_ids": [' + b"1," * 60 + b"1]}", 413, "too many candidates"),
        (b'{"user_id": 1, "item_ids": [' + b"1, " * 1500 + b"1]}", 413, "request body over 4096"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_reason(served, body, status, reason):
    _, client = served
    got = client.post("/rank", content=body, headers={"content-type": "application/json"})
    assert got.status_code == status, got.text
    assert reason in got.json()["detail"]


def test_items_needs_the_token_and_rejects_bad_input(served):
    _, client = served
    item = {"item_id": 70, "text": "a film", "category": "Drama"}
    assert client.post("/items", json=item).status_code == 401
    assert (
        client.post("/items", json=item, headers={"authorization": "Bearer nope"}).status_code
        == 401
    )
    auth = {"authorization": "Bearer s3cret"}
    bad = client.post("/items", json={**item, "image": "%%%"}, headers=auth)
    assert bad.status_code == 422 and "base64" in bad.json()["detail"]
    bad = client.post("/items", json={**item, "item_id": "x"}, headers=auth)
    assert bad.status_code == 422 and "item_id" in bad.json()["detail"]
    bad = client.post("/items", content=b"{", headers={**auth, "content-type": "application/json"})
    assert bad.status_code == 400
    bad = client.post("/items", data=item, files={"image": (None, "not a file")}, headers=auth)
    assert bad.status_code == 422 and "file" in bad.json()["detail"]
    big = client.post("/items", files={"image": ("a.jpg", b"x" * 5000)}, data=item, headers=auth)
    assert big.status_code == 413


def test_new_items_are_embedded_and_ranked_at_once(served):
    cfg, client = served
    auth = {"authorization": "Bearer s3cret"}
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(png, format="PNG")
    bad = client.post(
        "/items",
        headers=auth,
        json={"item_id": 71, "text": "t", "image": base64.b64encode(b"no image").decode()},
    )
    assert bad.status_code == 422 and "undecodable image" in bad.json()["detail"]
    added = client.post(
        "/items",
        headers=auth,
        data={"item_id": "70", "text": "A new film", "category": "Drama"},
        files={"image": ("poster.png", png.getvalue(), "image/png")},
    )
    assert added.status_code == 200, added.text
    assert [(a["item_id"], a["has_img"]) for a in added.json()["added"]] == [(70, True)]
    body = client.post("/rank", json={"user_id": 1, "item_ids": [70, 3]}).json()
    assert {i["item_id"]: i["status"] for i in body["items"]}[70] == "unknown_item"
    want = dict(zip([70, 3], _offline_scores(cfg, 1, [70, 3])))  # Delta holds item 70 too
    assert all(abs(i["score"] - want[i["item_id"]]) <= 1e-5 for i in body["items"])


def test_new_items_are_scored_by_their_category_and_content(served, din_dir):
    """Items added after training are scored with the category and vectors read online, by either
    model the training DAG promotes: DIN tells two new items apart by category (before, both got
    category index 0 and the same score), the content model by text and by image. Each item's
    `used` says which features its score used."""
    cfg, client = served
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (20, 90, 200)).save(png, format="PNG")
    text = "A heist in the rain"
    new = [
        {"item_id": 80, "text": text, "category": "genre1"},
        {"item_id": 81, "text": text, "category": "genre2|x"},  # normalised to genre2
        {"item_id": 82, "text": "A comedy about a talking dog", "category": "genre1"},
        {
            "item_id": 83,
            "text": text,
            "category": "genre1",
            "image": base64.b64encode(png.getvalue()).decode(),
        },
        {"item_id": 84, "text": text, "category": "Westerns"},
    ]  # a category the model never saw
    added = client.post("/items", headers={"authorization": "Bearer s3cret"}, json={"items": new})
    assert added.status_code == 200, added.text
    request = {"user_id": 1, "item_ids": [80, 81, 82, 83, 84, 3]}

    def ranked(app_client):
        got = app_client.post("/rank", json=request)
        assert got.status_code == 200, got.text
        return {i["item_id"]: i for i in got.json()["items"]}

    with TestClient(create_app(cfg, ranker=Ranker.load(din_dir))) as din_client:
        din = ranked(din_client)
    assert din[80]["score"] != din[81]["score"]  # same content, other category
    assert din[80]["score"] == din[82]["score"] == din[83]["score"]  # DIN reads no content
    assert din[80]["used"] == {"id": False, "category": "genre1", "vectors": []}
    assert din[81]["used"]["category"] == "genre2" and din[84]["used"]["category"] is None
    assert din[3]["used"] == {
        "id": True,
        "category": "genre3",
        "vectors": [],
    }  # synthetic: none online

    content = ranked(client)
    assert content[80]["score"] != content[82]["score"]  # other text
    assert content[80]["score"] != content[83]["score"]  # same text, with an image
    assert content[80]["used"] == {"id": False, "category": "genre1", "vectors": ["txt", "fused"]}
    assert content[83]["used"] == {
        "id": False,
        "category": "genre1",
        "vectors": ["img", "txt", "fused"],
    }
    assert all(content[i]["status"] == "unknown_item" for i in range(80, 85))
    want = dict(zip(request["item_ids"], _offline_scores(cfg, 1, request["item_ids"])))
    assert all(abs(content[i]["score"] - want[i]) <= 1e-5 for i in want)


def test_cached_item_vectors_are_replaced_when_an_item_is_rewritten(served):
    """Within the item cache's lifetime: a re-embedded and materialised item, and an item rewritten
    through POST /items, are scored with their new vectors on the next request."""
    from mminterest import tables

    cfg, client = served
    request = {"user_id": 1, "item_ids": [4, 5]}
    before = {i["item_id"]: i["score"] for i in client.post("/rank", json=request).json()["items"]}
    emb = tables.read(cfg.table("item_embeddings"), ids=[4])
    rng = np.random.default_rng(4)
    for name in ("txt", "fused"):
        v = rng.standard_normal(len(emb[name].iloc[0])).astype(np.float32)
        emb[name] = [v / np.linalg.norm(v)]
    tables.merge_arrow(
        pa.Table.from_pandas(emb, preserve_index=False).cast(
            tables.schema(cfg.table("item_embeddings"))
        ),
        cfg.table("item_embeddings"),
        ["item_id"],
    )
    repo.materialize(open_store(cfg), full=True)  # what a re-embedding run is followed by
    after = {i["item_id"]: i["score"] for i in client.post("/rank", json=request).json()["items"]}
    assert after[4] != before[4]
    assert abs(after[4] - _offline_scores(cfg, 1, [4, 5])[0]) <= 1e-5

    rewritten = client.post(
        "/items",
        headers={"authorization": "Bearer s3cret"},
        json={"item_id": 5, "text": "A different film altogether", "category": "Horror"},
    )
    assert rewritten.status_code == 200, rewritten.text
    latest = {i["item_id"]: i["score"] for i in client.post("/rank", json=request).json()["items"]}
    assert latest[5] != after[5]
    assert abs(latest[5] - _offline_scores(cfg, 1, [4, 5])[1]) <= 1e-5


def test_health_readiness_and_metrics(served):
    _, client = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]
    client.post("/rank", json={"user_id": 1, "item_ids": [1, 2]})
    text = client.get("/metrics").text
    assert 'mmi_http_requests_total{route="/rank",status="200"}' in text
    assert "mmi_http_request_seconds_bucket" in text
    assert "mmi_feature_fetch_seconds_count" in text and "mmi_model_seconds_count" in text


def test_not_ready_without_a_fitting_model(tmp_path, model_dir):
    cfg = load_config(home=tmp_path / "mmi", model_dir=tmp_path / "none")
    with TestClient(create_app(cfg)) as client:
        assert client.get("/healthz").status_code == 200
        got = client.get("/readyz")
        assert got.status_code == 503 and "model not loaded" in got.json()["detail"]
        assert client.post("/rank", json={"user_id": 1, "item_ids": [1]}).status_code == 503
    with TestClient(create_app(load_config(home=tmp_path / "mmi", model_dir=model_dir))) as client:
        detail = client.get("/readyz").json()["detail"]
        assert "takes seq_len, time_slices, sim_bins = [16, 4, 8]; the features have [64" in detail


def test_redis_outage_gives_503_and_the_service_recovers(tmp_path, model_dir):
    with RedisServer() as server:
        cfg, store = _home(tmp_path, model_dir, "redis", server.url)
        with TestClient(create_app(cfg)) as client:
            request = {"user_id": 1, "item_ids": [1, 2, 3]}
            before = client.post("/rank", json=request).json()
            server.stop()
            down = client.post("/rank", json=request)
            assert down.status_code == 503 and "online store unreachable" in down.json()["detail"]
            assert client.get("/readyz").status_code == 503
            server.start()  # same port, empty: the store comes back, then is refilled
            assert client.post("/rank", json=request).status_code == 200
            assert client.get("/readyz").status_code == 200
            repo.materialize(store, full=True)
            assert client.post("/rank", json=request).json() == before


def test_mmi_serve_answers_on_loopback(tmp_path, model_dir):
    cfg, _ = _home(tmp_path, model_dir, "sqlite")
    port = free_port()
    env = {
        **os.environ,
        "MMI_HOME": str(cfg.home),
        "MMI_MODEL_DIR": str(model_dir),
        **{f"MMI_{k.upper()}": str(v) for k, v in SMALL.items()},
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mminterest.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        got = httpx.post(url + "/rank", json={"user_id": 1, "item_ids": [1, 2, 3]})
        assert got.status_code == 200 and len(got.json()["items"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=20)
