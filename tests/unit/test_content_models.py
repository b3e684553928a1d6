"""MIM content models: encoder, C-SFT loss and negatives, pre-training, pair mining, metrics, CLI.

Tiny configs (random small BERT with the packaged MiniLM tokenizer, a 16x16 ViT), all offline.
Heavy modules import inside the tests so the 2-process gloo workers start fast.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

N, D, K = 4, 8, 3  # pairs per worker, embedding dim, queued batches


def tiny_config():
    from training.content.encoders import EncoderConfig

    return EncoderConfig(
        dim=16,
        text_source="tiny",
        text_max_len=16,
        tiny_text_hidden=32,
        tiny_text_layers=2,
        text_trainable_layers=1,
        image_source="vit",
        image_size=16,
        image_patch=8,
        image_hidden=32,
        image_layers=2,
        image_heads=2,
        fusion_hidden=32,
        dropout=0.0,
    )


@pytest.fixture
def encoder():
    from training.content.encoders import MultimodalEncoder

    torch.manual_seed(0)
    return MultimodalEncoder.build(tiny_config())


@pytest.fixture
def catalogue(tmp_path) -> pd.DataFrame:
    """8 items in 2 categories; 4 real images, one corrupt file, the rest without image."""
    rng = np.random.default_rng(0)
    paths: list[str | None] = []
    for i in range(4):
        path = tmp_path / f"poster{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 255, (20 + i, 14, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    paths += [str(tmp_path / "broken.jpg"), None, None, str(tmp_path / "missing.jpg")]
    words = [
        "space war",
        "space opera",
        "love story",
        "love letters",
        "war drama",
        "family drama",
        "toy adventure",
        "toy story",
    ]
    return pd.DataFrame(
        {
            "item_id": np.arange(10, 18, dtype=np.int64),
            "text": words,
            "category": ["a", "a", "b", "b", "a", "b", "a", "b"],
            "image_path": paths,
        }
    )


def _random_outputs(n: int, gen: torch.Generator, grad: bool = False) -> dict[str, torch.Tensor]:
    out = {
        key: torch.nn.functional.normalize(torch.randn(n, D, generator=gen), dim=-1)
        for key in ("fused", "txt", "img")
    }
    out["img_mask"] = torch.rand(n, generator=gen) < 0.7
    out["img"] = out["img"] * out["img_mask"].unsqueeze(-1)
    if grad:
        out = {k: v.requires_grad_() if v.is_floating_point() else v for k, v in out.items()}
    return out


def _run_steps(steps: int, seed: int) -> list[int]:
    from training.content.losses import NegativeQueue, csft_loss

    gen = torch.Generator().manual_seed(seed)
    queue, counts = NegativeQueue(K), []
    for _ in range(steps):
        q, p, n = (_random_outputs(N, gen, grad=True) for _ in range(3))
        loss, stats = csft_loss(q, p, n, queue)
        loss.backward()
        assert torch.isfinite(loss) and q["fused"].grad is not None and p["txt"].grad is not None
        counts.append(int(stats["n_negatives"]))
    return counts


def test_negative_count_single_worker():
    counts = _run_steps(K + 2, seed=1)
    assert counts[0] == 2 * N - 1
    assert (
        counts[K:] == [2 * N * 1 * (K + 1) - 1] * 2
    )  # 2NP(k+1)-1 with P = 1 once the queue is full


def test_false_negative_masking_and_requeued_features():
    from training.content.losses import NegativeQueue, csft_loss

    gen = torch.Generator().manual_seed(2)
    q, p, n = (_random_outputs(2, gen, grad=True) for _ in range(3))
    q["item_id"], p["item_id"], n["item_id"] = (
        torch.tensor([1, 2]),
        torch.tensor([3, 3]),
        torch.tensor([1, 4]),
    )
    # candidates [3, 3, 1, 4]: query 0 (item 1) drops the copy of 3 and itself, query 1 drops slot 0
    _, stats = csft_loss(q, p, n, None)
    assert stats["n_negatives"] == 3 and stats["n_masked"] == 1.5

    proj = torch.nn.Linear(5, D)

    def heads(txt_feat, img_feat, img_mask):
        txt = torch.nn.functional.normalize(proj(txt_feat), dim=-1)
        img = torch.nn.functional.normalize(proj(img_feat), dim=-1) * img_mask.unsqueeze(-1)
        return {"txt": txt, "img": img, "img_mask": img_mask, "fused": txt}

    queue = NegativeQueue(2)
    for _ in range(3):
        feats = [
            {
                "txt_feat": torch.randn(N, 5, generator=gen),
                "img_feat": torch.randn(N, 5, generator=gen),
                "img_mask": torch.ones(N, dtype=torch.bool),
            }
            for _ in range(3)
        ]
        q, p, n = ({**f, **heads(f["txt_feat"], f["img_feat"], f["img_mask"])} for f in feats)
        proj.zero_grad()
        loss, stats = csft_loss(q, p, n, queue, heads=heads)
        loss.backward()
    assert set(queue.tensors() or {}) == {
        "txt_feat",
        "img_feat",
        "img_mask",
    }  # features, not embeddings
    assert stats["n_negatives"] == 2 * N * 3 - 1 and proj.weight.grad is not None


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from training.content.losses import gather_from_all_workers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x = torch.full((3, 2), float(rank), requires_grad=True)
        gathered = gather_from_all_workers(x)
        (gathered * torch.arange(1.0, 7.0).unsqueeze(1)).sum().backward()
        mask = gather_from_all_workers(torch.tensor([True, rank == 1]))
        counts = _run_steps(K + 1, seed=10 + rank)
        assert x.grad is not None
        np.save(
            os.path.join(out_dir, f"rank{rank}.npy"),
            np.array([*gathered[:, 0].tolist(), *x.grad[:, 0].tolist(), *mask.tolist(), *counts]),
        )
    finally:
        dist.destroy_process_group()


def test_negative_count_two_workers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        row = np.load(tmp_path / f"rank{rank}.npy")
        assert row[:6].tolist() == [0, 0, 0, 1, 1, 1]  # rank order
        assert row[6:9].tolist() == [
            1 + 3 * rank,
            2 + 3 * rank,
            3 + 3 * rank,
        ]  # local slice keeps grad
        assert row[9:13].tolist() == [1, 0, 1, 1]  # bools survive gloo
        assert row[13] == 2 * N * 2 - 1 and row[-1] == 2 * N * 2 * (K + 1) - 1  # P = 2


def test_outputs_normalised_and_missing_images(encoder, catalogue):
    out = encoder.embed(catalogue["text"].tolist(), catalogue["image_path"].tolist(), batch_size=3)
    assert (
        out["img_mask"].tolist() == [True] * 4 + [False] * 4
    )  # corrupt, None, absent file -> no image
    for key in ("txt", "fused"):
        assert out[key].dtype == np.float32 and out[key].shape == (8, 16)
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=1), 1.0, atol=1e-5)
    norms = np.linalg.norm(out["img"], axis=1)
    np.testing.assert_allclose(norms[:4], 1.0, atol=1e-5)
    assert (norms[4:] == 0).all()


def test_fusion_ignores_masked_image_but_keeps_text(encoder):
    txt = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    img = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    no_img = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        masked = encoder.fuse(img, no_img, txt)
        zeroed = encoder.fuse(torch.zeros_like(img), no_img, txt)
        with_img = encoder.fuse(img, ~no_img, txt)
    torch.testing.assert_close(masked, zeroed)
    assert not torch.allclose(masked[0], masked[1])  # text terms survive the missing image
    assert not torch.allclose(with_img, masked)


def test_one_csft_step_reaches_every_trainable_part(encoder, catalogue):
    from training.content.losses import NegativeQueue, csft_loss

    groups = encoder.param_groups()
    assert all(groups[part] for part in ("text", "image", "heads"))
    texts, paths = catalogue["text"].tolist(), catalogue["image_path"].tolist()
    rows = [0, 2, 4, 1, 3, 5, 6, 7, 0]  # 3 queries, 3 positives, 3 hard negatives
    encoder.train()
    out = encoder.encode([texts[r] for r in rows], [paths[r] for r in rows])
    q, p, n = ({k: v[i * 3 : (i + 1) * 3] for k, v in out.items()} for i in range(3))
    loss, stats = csft_loss(q, p, n, NegativeQueue(2), heads=encoder.heads)
    loss.backward()
    assert stats["n_negatives"] == 5 and stats["loss_q2img"] > 0
    for part, params in groups.items():
        assert all(prm.grad is not None and torch.isfinite(prm.grad).all() for prm in params), part
        assert sum(float(prm.grad.abs().sum()) for prm in params) > 0, part
    named = dict(encoder.named_parameters())
    top = encoder.text.model.encoder.layer[-1]
    assert all(prm.grad is not None for prm in top.parameters())
    assert named["text.model.embeddings.word_embeddings.weight"].grad is None  # frozen by config
    assert all(prm.grad is not None for prm in encoder.fusion.parameters())
    assert all(prm.grad is not None for prm in encoder.image_proj.parameters())


def test_encoder_version_and_save_load_round_trip(encoder, catalogue, tmp_path):
    from training.content.encoders import MultimodalEncoder

    version = encoder.encoder_version()
    assert version == encoder.encoder_version() and len(version) == 16
    assert encoder.save(tmp_path / "enc") == version
    loaded = MultimodalEncoder.load(tmp_path / "enc")
    assert loaded.encoder_version() == version
    texts, paths = catalogue["text"].tolist(), catalogue["image_path"].tolist()
    a, b = encoder.embed(texts, paths), loaded.embed(texts, paths)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)
    with torch.no_grad():
        loaded.fusion[0].bias[0] += 1e-3
    assert loaded.encoder_version() != version


def _rated(rows) -> pd.DataFrame:
    """(user, item, day, rating) rows -> interactions with event_ts and label (rating >= 4)."""
    t0 = pd.Timestamp("2020-01-01", tz="UTC")
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "day", "rating"])
    frame["event_ts"] = [t0 + pd.Timedelta(days=d) for d in frame.pop("day")]
    frame["label"] = (frame["rating"] >= 4).astype(int)
    return frame.sample(frac=1, random_state=0).reset_index(drop=True)


def test_mine_interest_pairs_and_hard_negatives(catalogue):
    from training.content.csft import (
        PairConfig,
        hard_negatives,
        mine_interest_pairs,
        split_interest_pairs,
    )

    frame = _rated(
        [
            # user 1's 80th percentile is 5: only the 5s are top; 15 is 29 days after 11 (window 14 days)
            (1, 10, 0, 5.0),
            (1, 11, 1, 5.0),
            (1, 12, 1.5, 4.5),
            (1, 13, 2, 4.0),
            (1, 14, 3, 3.0),
            (1, 15, 30, 5.0),
            # user 2 rates everything 4: all top; the repeat of 10 makes no (10, 10) pair
            (2, 10, 0, 4.0),
            (2, 10, 0.001, 4.0),
            (2, 16, 2, 4.0),
            (3, 10, 0, 3.0),
            (3, 11, 0, 3.5),
        ]
    )  # user 3: nothing at 4 or above
    pairs = mine_interest_pairs(frame, PairConfig(window_days=14, partners=3))
    assert list(zip(pairs.user_id, pairs.query_item, pairs.pos_item)) == [(1, 10, 11), (2, 10, 16)]
    t0 = pd.Timestamp("2020-01-01", tz="UTC")
    assert pairs["event_ts"].tolist() == [
        t0 + pd.Timedelta(days=1),
        t0 + pd.Timedelta(days=2),
    ]  # later event
    labels_only = frame.drop(columns="rating")  # no rating column: label == 1 events are top
    assert len(mine_interest_pairs(labels_only, PairConfig(partners=5))) > len(pairs)
    numeric = frame.assign(
        event_ts=(frame["event_ts"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    )
    assert mine_interest_pairs(numeric)[["user_id", "query_item", "pos_item"]].equals(
        pairs[["user_id", "query_item", "pos_item"]]
    )

    # a bulk rater: 60 top ratings within one day give at most 60 x partners pairs, not 60*59/2
    bulk = _rated([(9, 100 + i, i / 100, 5.0) for i in range(60)])
    n_bulk = len(mine_interest_pairs(bulk, PairConfig(partners=2)))
    assert 60 <= n_bulk <= 120

    # leakage guard: training pairs come from pre-cut events only; later ratings cannot change them
    cut = pd.Timestamp("2020-01-20", tz="UTC")
    train, held = split_interest_pairs(frame, cut)
    assert (train["event_ts"] < cut).all() and (held["event_ts"] >= cut).all()
    later = pd.concat(
        [frame, _rated([(1, 20 + i, 25 + i, 3.0) for i in range(10)])]
    )  # user 1's scale drops
    train_later, _ = split_interest_pairs(later, cut)
    assert train_later.equals(train)
    assert split_interest_pairs(frame, None)[1].empty

    negs = hard_negatives(pairs, catalogue, seed=3)
    cat = dict(zip(catalogue.item_id, catalogue.category))
    for (_, row), neg in zip(pairs.iterrows(), negs):
        assert cat[neg] == cat[row.pos_item] and neg not in (row.pos_item, row.query_item)
    assert (negs == hard_negatives(pairs, catalogue, seed=3)).all()


def test_train_loops_metrics_and_cli(encoder, catalogue, tmp_path):
    from training.content import cli
    from training.content.csft import CsftConfig, train_csft
    from training.content.evaluate import image_text_recall_at_k, interest_recall_at_k
    from training.content.pretrain import PretrainConfig, pretrain

    before = encoder.encoder_version()
    summary = pretrain(encoder, catalogue, PretrainConfig(batch_size=4, log_every=1))
    assert summary["items_with_image"] == 4 and len(summary["dda_loss"]) == 1
    after_pretrain = encoder.encoder_version()
    assert after_pretrain != before
    ids = catalogue["item_id"].tolist()
    pairs = pd.DataFrame({"query_item": ids, "pos_item": ids[1:] + ids[:1]})
    text_before = encoder.text.model.encoder.layer[-1].output.dense.weight.detach().clone()
    fusion_before = encoder.fusion[0].weight.detach().clone()
    summary = train_csft(
        encoder, catalogue, pairs, CsftConfig(batch_size=2, queue_batches=2, log_every=1)
    )
    assert summary["steps"] == 4 and summary["n_negatives"] == 2 * 2 * (2 + 1) - 1
    assert summary["mode"].startswith("cached") and len(summary["epoch_loss"]) == 1
    assert torch.equal(
        encoder.text.model.encoder.layer[-1].output.dense.weight, text_before
    )  # backbone frozen
    assert not torch.equal(encoder.fusion[0].weight, fusion_before)  # heads learn
    assert encoder.encoder_version() != after_pretrain
    full = train_csft(
        encoder,
        catalogue,
        pairs,
        CsftConfig(batch_size=2, queue_batches=2, epochs=2, cached_features=False),
    )
    assert full["mode"] == "full" and full["steps"] == 8
    assert not torch.equal(encoder.text.model.encoder.layer[-1].output.dense.weight, text_before)
    assert interest_recall_at_k(encoder, catalogue, pairs, k=7) == 1.0  # 7 = catalogue minus query
    assert image_text_recall_at_k(encoder, catalogue, k=4) == 1.0
    assert 0.0 <= interest_recall_at_k(encoder, catalogue, pairs, k=1) <= 1.0

    catalogue.to_parquet(tmp_path / "items.parquet")
    t0 = pd.Timestamp("2020-01-01", tz="UTC")
    inter = pd.DataFrame(
        {
            "user_id": [1] * 8 + [2] * 8,
            "item_id": ids + ids[::-1],
            "event_ts": [t0 + pd.Timedelta(minutes=m) for m in range(16)],
            "label": 1,
        }
    )
    inter.to_parquet(tmp_path / "inter.parquet")
    common = [
        "--items",
        str(tmp_path / "items.parquet"),
        "--interactions",
        str(tmp_path / "inter.parquet"),
        "--batch-size",
        "2",
        "--max-steps",
        "1",
    ]
    encoder.save(tmp_path / "start")
    assert (
        cli.main(
            ["pretrain", *common, "--out", str(tmp_path / "pre"), "--ckpt", str(tmp_path / "start")]
        )
        == 0
    )
    assert (
        cli.main(["csft", *common, "--out", str(tmp_path / "ft"), "--ckpt", str(tmp_path / "pre")])
        == 0
    )
    assert (
        cli.main(
            ["evaluate", *common, "--out", str(tmp_path / "ev"), "--ckpt", str(tmp_path / "ft")]
        )
        == 0
    )
    assert (tmp_path / "ft" / "encoder.pt").is_file() and (
        tmp_path / "ev" / "metrics.json"
    ).is_file()


def test_csft_under_torchrun_two_workers(encoder, catalogue, tmp_path):
    import json
    import subprocess
    import sys

    from training.content.csft import mine_interest_pairs
    from training.content.encoders import MultimodalEncoder

    ids = catalogue["item_id"].tolist()
    catalogue.to_parquet(tmp_path / "items.parquet")
    t0 = pd.Timestamp("2020-01-01", tz="UTC")
    pd.DataFrame(
        {
            "user_id": [1] * 8 + [2] * 8,
            "item_id": ids + ids[::-1],
            "label": 1,
            "event_ts": [t0 + pd.Timedelta(minutes=m) for m in range(16)],
        }
    ).to_parquet(tmp_path / "inter.parquet")
    start = encoder.save(tmp_path / "start")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "training.content.cli",
        "csft",
        "--items",
        str(tmp_path / "items.parquet"),
        "--interactions",
        str(tmp_path / "inter.parquet"),
        "--ckpt",
        str(tmp_path / "start"),
        "--out",
        str(tmp_path / "ft"),
        "--batch-size",
        "2",
        "--queue-batches",
        "2",
        "--cut-quantile",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    n_pairs = len(mine_interest_pairs(pd.read_parquet(tmp_path / "inter.parquet")))
    # n_pairs // 2 per worker, in steps of N = 2 on P = 2 workers; the queue (k = 2) is full from step 3
    assert n_pairs >= 12 and summary["workers"] == 2 and summary["steps"] == (n_pairs // 2) // 2
    assert summary["n_negatives"] == 2 * 2 * 2 * (2 + 1) - 1
    assert MultimodalEncoder.load(tmp_path / "ft").encoder_version() not in (start, "")


def test_real_minilm_loads_offline_and_ranks_titles():
    from training.content.towers import MINILM, TextTower

    tower = TextTower.build(MINILM, max_len=48, tiny_hidden=32, tiny_layers=2).eval()
    with torch.no_grad():
        v = torch.nn.functional.normalize(
            tower(
                [
                    "Star Wars: Episode IV - A New Hope (1977). Action, Sci-Fi",
                    "Star Wars: Episode V - The Empire Strikes Back (1980). Sci-Fi",
                    "Pride and Prejudice (1995). Drama, Romance",
                ]
            ),
            dim=-1,
        )
    assert tower.hidden_size == 384
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.1


def test_image_tower_from_local_vit_checkpoint(tmp_path, catalogue):
    import dataclasses
    import json

    from transformers import ViTConfig, ViTModel

    from training.content.encoders import MultimodalEncoder

    vit = ViTModel(
        ViTConfig(
            image_size=24,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        add_pooling_layer=False,
    )
    vit.save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.4, 0.4, 0.4], "image_std": [0.2, 0.2, 0.2]})
    )
    enc = MultimodalEncoder.build(
        dataclasses.replace(tiny_config(), image_source=str(tmp_path / "vit"))
    )
    assert enc.image_size == 24 and float(enc.image.pixel_std.flatten()[0]) == pytest.approx(0.2)
    cls_token = "embeddings.cls_token"
    torch.testing.assert_close(enc.image.model.state_dict()[cls_token], vit.state_dict()[cls_token])
    out = enc.embed(catalogue["text"].tolist()[:3], catalogue["image_path"].tolist()[:3])
    assert out["img_mask"].all() and out["img"].shape == (3, 16)


def test_efficientnet_lite0_loads_packaged_weights(catalogue):
    """The one test that loads EfficientNet: every key of the packaged file but the classifier, equal
    tensors, pooled 1280-d features; the encoder_version differs from the ViT variant's."""
    import dataclasses

    from training.content.encoders import MultimodalEncoder
    from training.content.towers import EFFICIENTNET_LITE0, ImageTower, efficientnet_lite0_weights

    tower = ImageTower.build(
        EFFICIENTNET_LITE0, size=64, patch=8, hidden=32, layers=1, heads=1
    ).eval()
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    assert len(state) == 296
    mine = tower.model.state_dict()
    assert set(mine) == {
        k for k in state if not k.startswith("_fc.")
    }  # all matched, classifier dropped
    for key, value in mine.items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        feats = tower(torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, 1280) and tower.hidden_size == 1280 and torch.isfinite(feats).all()

    tower.set_trainable(1)
    tower.train()  # BatchNorm keeps its statistics, frozen blocks stay in eval mode while training
    assert not tower.model._bn0.training and not tower.model._blocks[0].training
    assert (
        tower.model._blocks[-1].training
        and tower.model._blocks[-1]._depthwise_conv.weight.requires_grad
    )
    assert not tower.model._blocks[0]._depthwise_conv.weight.requires_grad
    vit = MultimodalEncoder.build(tiny_config())
    cfg = dataclasses.replace(tiny_config(), image_source=EFFICIENTNET_LITE0, image_size=32)
    torch.manual_seed(0)
    eff = MultimodalEncoder.build(cfg)
    assert eff.encoder_version() != vit.encoder_version()
    out = eff.embed(catalogue["text"].tolist()[:4], catalogue["image_path"].tolist()[:4])
    assert out["img"].shape == (4, 16) and out["img_mask"].all()
