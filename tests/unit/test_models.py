"""CTR model zoo: shapes, gradients, DMAE (MIEU eq. 1-4, Table 3 ablations, aux loss), SimTier's fused
histogram, user-ID dropout, padding invariance, save/load, CiUBM, overfitting.

Batches are tiny random ones that follow CONTRACTS.md (B=4, T=8, l=2, n=4); each model is fed only the
keys it declares in `required_keys()`, so the declared key lists are checked too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.models import MODELS, CiUBM, ModelConfig, build_model, load_model, model_names
from training.models.base import FeatureEmbeddings
from training.models.dmae import MIEU
from training.models.layers import MaskedAttention, TargetAttention
from training.models.simtier import fused_histogram, similarity_histogram

B, T, L, N, MM = 4, 8, 2, 4, 12
N_USERS, N_ITEMS, N_CATS = 40, 30, 5
CFG = ModelConfig(
    n_users=N_USERS,
    n_items=N_ITEMS,
    n_cats=N_CATS,
    emb_dim=8,
    seq_len=T,
    time_slices=L,
    sim_bins=N,
    mm_dim=MM,
    mlp_dims=(16,),
    att_dims=(8,),
    n_heads=2,
    sim_topk=4,
    twin_topk=4,
    n_tiers=4,
    n_buckets=4,
    window=3,
    mask_prob=0.25,
    lambda_dec=0.5,
)
Changes = dict[str, object]
NO_CHANGES: Changes = {}
DMAE_ABLATIONS: list[
    Changes
] = [  # DMAE Table 3: w/o MIEU-se, w/o MIEU-t, w/o MIFU, w/o IDDU (two ways), all
    {"use_mieu_se": False},
    {"use_mieu_t": False},
    {"use_mifu": False},
    {"use_iddu": False},
    {"lambda_dec": 0.0},
    {"use_mieu_se": False, "use_mieu_t": False, "use_mifu": False, "use_iddu": False},
]
VARIANTS: list[tuple[str, Changes]] = [
    *((name, NO_CHANGES) for name in model_names()),
    *(("dmae", changes) for changes in DMAE_ABLATIONS),
    ("sim", {"sim_mode": "hard"}),
    ("ciubm_sim", {"sim_mode": "hard"}),
    ("ciubm_din", {"use_id": False}),
    ("ciubm_din", {"use_content": False}),
    ("ciubm_din", {"use_fusion": False}),
    ("ciubm_din", {"ciubm_mean": True}),
    ("din", {"att_softmax": True}),
    ("dmae", {"att_softmax": True}),
    ("simtier", {"simtier_source": "per_modality"}),
    ("ciubm_simtier", {"simtier_source": "per_modality"}),
    ("simtier", {"att_softmax": True}),
    ("din", {"user_dropout": 0.0}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in changes.items()) for name, changes in VARIANTS]


def category_of(items: np.ndarray) -> np.ndarray:
    """Fixed item -> category map (0 stays padding)."""
    return np.where(items > 0, items % (N_CATS - 1) + 1, 0)


def interest_distribution(sim: np.ndarray, mask: np.ndarray, l: int, n: int) -> np.ndarray:  # noqa: E741
    """CONTRACTS.md: slice i = positions [i*T/l, (i+1)*T/l), bin = min(floor(r*n), n-1), p = count / T."""
    b, t = sim.shape
    out = np.zeros((b, l, n), dtype=np.float32)
    for row in range(b):
        for pos in np.flatnonzero(mask[row]):
            out[row, pos * l // t, min(int(sim[row, pos] * n), n - 1)] += 1.0 / t
    return out


def make_batch(rng: np.random.Generator, b: int = B, lens: tuple[int, ...] = (T, 5, 1, 0)) -> dict:
    """A CTR batch per CONTRACTS.md: right-padded histories, some items without an image / any content."""
    hist_len = np.array([lens[i % len(lens)] for i in range(b)])
    mask = np.arange(T)[None, :] < hist_len[:, None]
    item = rng.integers(1, N_ITEMS, b)
    hist_item = np.where(mask, rng.integers(1, N_ITEMS, (b, T)), 0)
    has_img = rng.random((b, T)) < 0.7
    has_mm = rng.random((b, T)) < 0.85
    hist_mm = (rng.normal(size=(b, T, MM)) * (mask & has_mm)[..., None]).astype(np.float32)
    target_mm = rng.normal(size=(b, MM)).astype(np.float32)
    mask_img, mask_txt = mask & has_img, mask.copy()
    sim_img = np.where(mask_img, rng.random((b, T)), 0.0).astype(np.float32)
    sim_txt = np.where(mask_txt, rng.random((b, T)), 0.0).astype(np.float32)
    arrays = {
        "user": rng.integers(1, N_USERS, b),
        "item": item,
        "cat": category_of(item),
        "hist_item": hist_item,
        "hist_cat": category_of(hist_item),
        "hist_mask": mask,
        "sim_img": sim_img,
        "sim_txt": sim_txt,
        "sim_mask_img": mask_img,
        "sim_mask_txt": mask_txt,
        "dist_img": interest_distribution(sim_img, mask_img, L, N),
        "dist_txt": interest_distribution(sim_txt, mask_txt, L, N),
        "target_mm": target_mm,
        "hist_mm": hist_mm,
        "label": (rng.random(b) < 0.5).astype(np.float32),
    }
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def perturb_padding(batch: dict, rng: np.random.Generator) -> dict:
    """Change every value at a masked position (ids, content vectors, similarity scores)."""
    out = dict(batch)
    pad = ~batch["hist_mask"]
    ids = torch.from_numpy(rng.integers(1, N_ITEMS, pad.shape))
    out["hist_item"] = torch.where(pad, ids, batch["hist_item"])
    out["hist_cat"] = torch.where(
        pad, torch.from_numpy(category_of(ids.numpy())), batch["hist_cat"]
    )
    noise = torch.from_numpy(rng.normal(size=batch["hist_mm"].shape).astype(np.float32))
    out["hist_mm"] = torch.where(pad[..., None], noise, batch["hist_mm"])
    for m in ("img", "txt"):
        r = torch.from_numpy(rng.random(pad.shape).astype(np.float32))
        out[f"sim_{m}"] = torch.where(batch[f"sim_mask_{m}"], batch[f"sim_{m}"], r)
    return out


def build(name: str, changes: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, CFG.replace(**changes))


def feed(model, batch: dict) -> dict:
    """The model's declared keys only."""
    return {k: batch[k] for k in model.required_keys()}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    order = scores.argsort()
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and thrash on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batch() -> dict:
    return make_batch(np.random.default_rng(0))


def test_registry_names():
    assert list(MODELS) == ["avgpool", "din", "dien", "bst", "sim", "twin", "simtier", "dmae"]
    assert "ciubm_din" in model_names() and "ciubm_avgpool" in model_names()
    assert build_model("ciubm_bst", CFG).model_name == "ciubm_bst"
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", CFG)
    with pytest.raises(ValueError, match="cannot wrap"):
        build_model("ciubm_ciubm_din", CFG)


def test_config_dict_round_trip():
    cfg = CFG.replace(sim_mode="hard", use_mifu=False)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.mlp_dims, tuple)
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="sim_mode"):
        CFG.replace(sim_mode="fuzzy")


def test_configs_saved_with_the_papers_symbols_still_load():
    """Models saved before T, l, n were renamed to the platform's seq_len, time_slices, sim_bins."""
    saved = {
        k: v for k, v in CFG.to_dict().items() if k not in ("seq_len", "time_slices", "sim_bins")
    }
    old = {**saved, "T": CFG.seq_len, "l": CFG.time_slices, "n": CFG.sim_bins}
    assert ModelConfig.from_dict(old) == CFG


@pytest.mark.parametrize(("name", "changes"), VARIANTS, ids=IDS)
def test_forward_backward(name, changes, batch):
    """Finite (B,) logits from the declared keys; every used parameter gets a finite, non-zero gradient."""
    model = build(name, changes).train()
    out = model(feed(model, batch))
    assert out["logit"].shape == (B,) and torch.isfinite(out["logit"]).all()
    assert out["aux_loss"].shape == () and torch.isfinite(out["aux_loss"])
    loss = (
        torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], batch["label"])
        + out["aux_loss"]
    )
    loss.backward()
    unused = ("backbone.head.",) if isinstance(model, CiUBM) else ()
    if isinstance(model, CiUBM) and not model.cfg.use_id:
        unused = ("backbone.",)
    # a softmax is shift-invariant: the attention score's output bias has an exactly-zero gradient there
    shift_invariant = {
        f"{mname}.score.net.{len(module.score.net) - 1}.bias"
        for mname, module in model.named_modules()
        if isinstance(module, TargetAttention) and module.softmax
    }
    for pname, param in model.named_parameters():
        if pname.startswith(unused):
            assert param.grad is None, pname
            continue
        if pname in shift_invariant:
            continue
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f"{pname} gradient is all zero"


@pytest.mark.parametrize(("name", "changes"), VARIANTS, ids=IDS)
def test_padding_invariance(name, changes, batch):
    model = build(name, changes).eval()
    with torch.no_grad():
        ref = model(feed(model, batch))["logit"]
        other = model(feed(model, perturb_padding(batch, np.random.default_rng(1))))["logit"]
    torch.testing.assert_close(other, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", model_names())
def test_save_load_round_trip(name, batch, tmp_path):
    model = build(name, {"sim_mode": "hard"} if "sim" in name else {}).eval()
    model.save(tmp_path / name)
    payload = json.loads((tmp_path / name / "config.json").read_text())
    assert payload["model"] == name and payload["config"]["emb_dim"] == CFG.emb_dim
    loaded = load_model(tmp_path / name).eval()
    assert type(loaded) is type(model) and loaded.model_name == name and loaded.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(loaded(feed(model, batch))["logit"], model(feed(model, batch))["logit"])


def test_dmae_aux_loss_training_only(batch):
    model = build("dmae", {})
    assert (
        "dist_txt" in model.train().required_keys()
        and "dist_txt" not in model.eval().required_keys()
    )
    assert model.train()(batch)["aux_loss"] > 0
    assert model.eval()(batch)["aux_loss"] == 0
    assert build("dmae", {"use_iddu": False}).train()(batch)["aux_loss"] == 0
    assert (
        build("ciubm_dmae", {}).train()(batch)["aux_loss"] > 0
    )  # CiUBM passes the backbone's aux loss on
    empty = dict(
        batch,
        dist_img=torch.zeros_like(batch["dist_img"]),
        dist_txt=torch.zeros_like(batch["dist_txt"]),
    )
    assert model.train()(empty)["aux_loss"] == 0  # all-zero P rows are left out, not NaN


def test_dmae_iddu_gets_gradients_only_in_training(batch):
    model = build("dmae", {})
    model.eval()(batch)["logit"].sum().backward()
    assert all(p.grad is None for p in model.iddu.parameters())
    assert all(p.grad is not None for p in model.mifu.parameters())


def dense_band(x: torch.Tensor, mask: torch.Tensor, half_window: int) -> torch.Tensor:
    """(B, T, T) allowed-mask of the sliding window over the real positions (MIFU's intra-modal attention)."""
    pos = torch.arange(x.shape[1])
    return ((pos[:, None] - pos[None, :]).abs() <= half_window).unsqueeze(0) & mask.unsqueeze(1)


@pytest.mark.parametrize(
    "t, half_window, block", [(8, 1, 16), (64, 5, 16), (64, 5, 8), (37, 3, 16), (10, 6, 4)]
)
def test_banded_attention_matches_dense_band(t, half_window, block):
    """The blocked banded kernel = the dense masked attention over the T x T band, outputs and gradients, at
    every real position (padded rows are unspecified and unused)."""
    torch.manual_seed(0)
    attention = MaskedAttention(8, 2)
    lens = torch.tensor([t, 0, 1, t // 2, 3, t - 1])
    mask = (torch.arange(t)[None] < lens[:, None]) & (
        torch.rand(len(lens), t) < 0.8
    )  # holes, as img
    mask[0] = True  # one full row
    x = torch.randn(len(lens), t, 8, requires_grad=True)
    weight = torch.randn(len(lens), t, 8) * mask.unsqueeze(-1)
    results = []
    for fast in (True, False):
        attention.zero_grad()
        x.grad = None
        if fast:
            out = attention.banded(x, mask, half_window, block)
        else:
            out = attention(x, x, dense_band(x, mask, half_window))
        (out * weight).sum().backward()
        results.append(
            (out[mask], x.grad.clone(), [p.grad.clone() for p in attention.parameters()])
        )
    (out_f, gx_f, gp_f), (out_d, gx_d, gp_d) = results
    torch.testing.assert_close(out_f, out_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx_f, gx_d, atol=1e-5, rtol=1e-5)
    for a, b in zip(gp_f, gp_d):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_pool_attention_matches_forward():
    torch.manual_seed(0)
    attention = MaskedAttention(8, 2)
    keys, query = torch.randn(3, 6, 8), torch.randn(3, 8)
    mask = torch.tensor([[True] * 6, [False] * 6, [True, False, True, False, False, False]])
    expected = attention(query.unsqueeze(1), keys, mask.unsqueeze(1))[:, 0]
    torch.testing.assert_close(attention.pool(query, keys, mask), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["dmae", "ciubm_dmae"])
def test_dmae_fast_attention_keeps_the_math(name, batch, monkeypatch):
    """MIFU on the blocked banded / single-query kernels gives the outputs, aux loss and gradients of the
    dense formulation (full T x T band mask, one generic call per attention) for the same weights."""
    model = build(name, {})
    results = []
    for dense in (False, True):
        if dense:
            monkeypatch.setattr(
                MaskedAttention,
                "banded",
                lambda self, x, mask, hw: self(x, x, dense_band(x, mask, hw)),
            )
            monkeypatch.setattr(
                MaskedAttention,
                "pool",
                lambda self, q, k, mask: self(q.unsqueeze(1), k, mask.unsqueeze(1))[:, 0],
            )
        model.zero_grad()
        torch.manual_seed(3)  # IDDU's random mask
        out = model.train()(feed(model, batch))
        (out["logit"].sum() + out["aux_loss"]).backward()
        with torch.no_grad():
            eval_logit = model.eval()(feed(model, batch))["logit"]
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((out["logit"].detach(), out["aux_loss"].detach(), eval_logit, grads))
    (logit_f, aux_f, eval_f, grads_f), (logit_d, aux_d, eval_d, grads_d) = results
    torch.testing.assert_close(logit_f, logit_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux_f, aux_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eval_f, eval_d, atol=1e-5, rtol=1e-5)
    assert grads_f.keys() == grads_d.keys()
    for k in grads_d:
        torch.testing.assert_close(grads_f[k], grads_d[k], atol=1e-5, rtol=1e-5)


def test_ciubm_without_content_modules_is_the_backbone_interest(batch):
    model = build("ciubm_din", {"use_content": False, "use_fusion": False}).eval()
    assert model.interest_dim == model.backbone.interest_dim
    assert model.head.net[0].in_features == model.backbone.head.net[0].in_features
    assert set(model.required_keys()) == set(model.backbone.required_keys())
    with torch.no_grad():
        assert torch.equal(model.interest(batch), model.backbone.interest(batch))
        assert model(batch)["logit"].shape == (B,)
    with pytest.raises(ValueError, match="at least one"):
        build("ciubm_din", {"use_id": False, "use_content": False, "use_fusion": False})


def test_ciubm_content_weights_are_masked_cosines(batch):
    model = build("ciubm_avgpool", {})
    a = model.content_weights(batch)
    assert (a[~batch["hist_mask"]] == 0).all() and (a.abs() <= 1 + 1e-6).all()
    cosine = torch.nn.functional.cosine_similarity(
        batch["target_mm"].unsqueeze(1), batch["hist_mm"], dim=-1
    )
    torch.testing.assert_close(a, cosine * batch["hist_mask"], atol=1e-6, rtol=1e-6)
    no_target = dict(batch, target_mm=torch.zeros_like(batch["target_mm"]))
    assert (
        model.content_weights(no_target) == 0
    ).all()  # an item without content adds no content interest


def test_sim_hard_search_ignores_other_categories(batch):
    model = build("sim", {"sim_mode": "hard"}).eval()
    other = batch["hist_cat"] != batch["cat"][:, None]
    changed = dict(
        batch,
        hist_item=torch.where(other, (batch["hist_item"] % (N_ITEMS - 1)) + 1, batch["hist_item"]),
    )
    with torch.no_grad():
        torch.testing.assert_close(model(changed)["logit"], model(batch)["logit"])


def test_similarity_histogram():
    sim = torch.tensor([[0.0, 0.3, 0.99, 1.0, 0.6]])
    mask = torch.tensor([[True, True, True, True, False]])
    torch.testing.assert_close(
        similarity_histogram(sim, mask, 4), torch.tensor([[0.2, 0.2, 0.0, 0.4]])
    )


# --- DMAE: MIEU (eq. 1-4) and the Table 3 ablations ------------------------------------------------------
def test_mieu_is_concatenation_then_two_layers():
    """code = ReLU(W2 [ReLU(W1 [r_hat * Bucket(floor(r (N_B - 1))) + sincos(r)] + b1) + PE] + b2), + = concat,
    W1, W2 in R^{d x 2d}; the position code enters through W2's second half only."""
    d, t, n_b = 8, 6, 4
    torch.manual_seed(0)
    mieu = MIEU(d, t, n_b)
    assert mieu.first.weight.shape == (d, 2 * d) and mieu.second.weight.shape == (d, 2 * d)
    with torch.no_grad():
        mieu.scale.weight.fill_(0.7)
        mieu.scale.bias.fill_(0.2)
    r = torch.tensor([[0.0, 0.3, 0.34, 0.5, 0.99, 1.0], [0.2, 0.4, 0.6, 0.8, 0.1, 0.0]])
    assert mieu.bucket(r)[0].tolist() == [0, 0, 1, 1, 2, 3]  # floor(r * 3)
    code = mieu(r)
    assert code.shape == (2, t, d) and (code >= 0).all()
    with torch.no_grad():
        freqs = mieu.sincos.freqs
        sincos = torch.cat(
            [torch.sin(r[..., None] * freqs), torch.cos(r[..., None] * freqs)], dim=-1
        )
        r_d = (0.7 * r + 0.2)[..., None] * mieu.buckets.weight[mieu.bucket(r)]
        h = torch.relu(torch.cat([r_d, sincos], -1) @ mieu.first.weight.T + mieu.first.bias)
        pe = mieu.position.weight[:t].expand(2, -1, -1)
        expected = torch.relu(torch.cat([h, pe], -1) @ mieu.second.weight.T + mieu.second.bias)
        torch.testing.assert_close(code, expected)
        # the position code changes the output; with W2's position columns zeroed it no longer does
        other = MIEU(d, t, n_b)
        other.load_state_dict(mieu.state_dict())
        other.position.weight.add_(torch.randn_like(other.position.weight))
        assert not torch.allclose(other(r), code)
        torch.testing.assert_close(other.similarity_embedding(r), mieu.similarity_embedding(r))
        mieu.second.weight[:, d:] = 0
        other.second.weight[:, d:] = 0
        torch.testing.assert_close(other(r), mieu(r))


def test_mieu_without_se_is_plain_bucketing():
    torch.manual_seed(0)
    mieu = MIEU(8, 6, 4, use_se=False)
    assert not hasattr(mieu, "first") and not hasattr(mieu, "scale") and not hasattr(mieu, "sincos")
    r = torch.rand(3, 6)
    with torch.no_grad():
        pe = mieu.position.weight.expand(3, -1, -1)
        h = mieu.buckets.weight[(r * 3).floor().long()]
        torch.testing.assert_close(mieu(r), torch.relu(mieu.second(torch.cat([h, pe], -1))))


def test_dmae_modalities_have_separate_parameters():
    model = build("dmae", {})
    img, txt = (
        dict(model.mieu["img"].named_parameters()),
        dict(model.mieu["txt"].named_parameters()),
    )
    assert img.keys() == txt.keys() and all(img[k] is not txt[k] for k in img)


def test_dmae_defaults_and_ablation_modules():
    full = ModelConfig(n_users=2, n_items=2, n_cats=2)
    assert (
        full.lambda_dec == 0.5
        and full.use_mieu_se
        and full.use_mieu_t
        and full.use_mifu
        and full.use_iddu
    )
    model = build("dmae", {})
    assert model.iddu["img"].decoder.out_dim == L * N
    no_t = build("dmae", {"use_mieu_t": False})
    assert no_t.iddu["img"].decoder.out_dim == N  # l = 1
    assert build("dmae", {"use_mifu": False}).mifu is None
    for changes in ({"use_iddu": False}, {"lambda_dec": 0.0}):
        off = build("dmae", changes).train()
        assert off.iddu is None and "dist_img" not in off.required_keys()


def test_dmae_without_time_axis_reconstructs_the_distribution_summed_over_slices(batch):
    """w/o MIEU-t: the IDDU target is dist (B, l, n) summed over the l slices = the l = 1 distribution."""
    iddu = build("dmae", {"use_mieu_t": False}).iddu["img"]
    dist = batch["dist_img"]
    torch.testing.assert_close(iddu.target(dist), dist.sum(dim=1))
    torch.testing.assert_close(iddu.target(dist.flatten(1)), dist.sum(dim=1))
    sim, mask = batch["sim_img"].numpy(), batch["sim_mask_img"].numpy()
    one_slice = torch.from_numpy(interest_distribution(sim, mask, 1, N))[:, 0]
    torch.testing.assert_close(iddu.target(dist), one_slice)
    model = build("dmae", {"use_mieu_t": False}).train()
    assert model(feed(model, batch))["aux_loss"] > 0


# --- SimTier -------------------------------------------------------------------------------------------
def simtier_reference(
    target: np.ndarray, hist: np.ndarray, mask: np.ndarray, n_tiers: int
) -> np.ndarray:
    """SimTier's histogram in plain numpy: tier counts of (cos + 1) / 2 over the real positions
    with content, / T."""
    b, t, _ = hist.shape
    out = np.zeros((b, n_tiers))
    for row in range(b):
        tn = np.linalg.norm(target[row])
        for pos in range(t):
            hn = np.linalg.norm(hist[row, pos])
            if not mask[row, pos] or tn == 0 or hn == 0:
                continue
            r = (float(target[row] @ hist[row, pos]) / (tn * hn) + 1) / 2
            out[row, min(int(r * n_tiers), n_tiers - 1)] += 1 / t
    return out


def test_simtier_fused_histogram_matches_numpy(batch):
    target, hist, mask = batch["target_mm"].clone(), batch["hist_mm"], batch["hist_mask"]
    target[1] = 0  # a target without content: an empty histogram
    got = fused_histogram(target, hist, mask, 5)
    assert got.shape == (B, 5)
    expected = simtier_reference(
        target.numpy().astype(np.float64), hist.numpy().astype(np.float64), mask.numpy(), 5
    )
    torch.testing.assert_close(got, torch.from_numpy(expected).float())
    has_content = mask & (hist.abs().sum(-1) > 0)
    torch.testing.assert_close(got.sum(-1)[[0, 2, 3]], has_content.sum(-1)[[0, 2, 3]].float() / T)
    assert (got[1] == 0).all()
    assert got.sum() > 0


def test_simtier_fused_is_the_default_and_reads_the_multimodal_vectors(batch):
    model = build("simtier", {}).eval()
    assert model.cfg.simtier_source == "fused"
    keys = set(model.required_keys())
    assert {"target_mm", "hist_mm", "hist_mask"} <= keys and not keys & {"sim_img", "sim_txt"}
    with torch.no_grad():
        h = model.interest(feed(model, batch))
    assert h.shape == (B, model.item_dim + CFG.n_tiers)
    expected = fused_histogram(
        batch["target_mm"], batch["hist_mm"], batch["hist_mask"], CFG.n_tiers
    )
    torch.testing.assert_close(h[:, model.item_dim :], expected)

    per = build("simtier", {"simtier_source": "per_modality"}).eval()
    keys = set(per.required_keys())
    assert {"sim_img", "sim_txt", "sim_mask_img", "sim_mask_txt"} <= keys and "hist_mm" not in keys
    with torch.no_grad():
        h = per.interest(feed(per, batch))
    assert h.shape == (B, per.item_dim + 2 * CFG.n_tiers)
    with pytest.raises(ValueError, match="simtier_source"):
        CFG.replace(simtier_source="both")


# --- user-ID dropout -------------------------------------------------------------------------------------
def test_user_dropout_only_in_training():
    embeddings = FeatureEmbeddings(CFG.replace(user_dropout=0.1))
    users = torch.arange(1, 20001) % (N_USERS - 1) + 1
    torch.manual_seed(5)
    dropped = embeddings.train().user_index(users)
    rate = float((dropped == 0).float().mean())
    assert 0.09 < rate < 0.11
    assert torch.equal(
        dropped[dropped != 0], users[dropped != 0]
    )  # the others are left as they are
    torch.manual_seed(5)
    assert torch.equal(
        embeddings.user_index(users), dropped
    )  # reproducible under torch.manual_seed
    assert torch.equal(embeddings.eval().user_index(users), users)
    assert torch.equal(
        FeatureEmbeddings(CFG.replace(user_dropout=0.0)).train().user_index(users), users
    )
    with pytest.raises(ValueError, match="user_dropout"):
        CFG.replace(user_dropout=1.0)


def test_user_dropout_trains_the_unknown_user_row(batch):
    """Row 0 (unknown user) gets gradient in training through the dropout; never in eval mode."""
    model = build("din", {"user_dropout": 0.5})
    assert (
        model.cfg.user_dropout == 0.5
        and ModelConfig(n_users=2, n_items=2, n_cats=2).user_dropout == 0.1
    )
    torch.manual_seed(0)
    model.train()(batch)["logit"].sum().backward()
    assert model.embeddings.user.weight.grad[0].abs().sum() > 0
    model.zero_grad()
    model.eval()(batch)["logit"].sum().backward()
    assert model.embeddings.user.weight.grad[0].abs().sum() == 0


def overfit_batch(rng: np.random.Generator, b: int = 32) -> dict:
    """label = the target's category occurs in the history; similarity is high for those items.

    One user for all rows, so the label cannot be memorised through the user embedding.
    """
    batch = make_batch(rng, b, lens=(T, 6, 4, 2))
    batch["user"] = torch.ones_like(batch["user"])
    same = (batch["hist_cat"] == batch["cat"][:, None]) & batch["hist_mask"]
    high = torch.from_numpy(rng.uniform(0.8, 1.0, (b, T)).astype(np.float32))
    low = torch.from_numpy(rng.uniform(0.0, 0.6, (b, T)).astype(np.float32))
    for m in ("img", "txt"):
        sim = torch.where(same, high, low) * batch[f"sim_mask_{m}"]
        batch[f"sim_{m}"] = sim
        batch[f"dist_{m}"] = torch.from_numpy(
            interest_distribution(sim.numpy(), batch[f"sim_mask_{m}"].numpy(), L, N)
        )
    batch["label"] = same.any(dim=1).float()
    return batch


@pytest.mark.parametrize("name", ["din", "dmae"])
def test_overfits_small_sample(name):
    batch = overfit_batch(np.random.default_rng(3))
    assert 0.2 < batch["label"].mean() < 0.8
    model = build(name, {"mlp_dims": (32, 16)}).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        out = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], batch["label"])
        opt.zero_grad()
        (loss + out["aux_loss"]).backward()
        opt.step()
    with torch.no_grad():
        scores = model.eval()(batch)["logit"].numpy()
    assert auc(batch["label"].numpy(), scores) > 0.9


def test_target_attention_is_the_mlp_over_the_concatenated_pair():
    """The folded first layer scores exactly what MLP([q, k, q-k, q*k]) scores (the paper's unit)."""
    torch.manual_seed(0)
    att = TargetAttention(24, (80, 40), softmax=False).eval()
    query, keys = torch.randn(200, 24), torch.randn(200, 64, 24)
    mask = torch.rand(200, 64) > 0.3
    q = query.unsqueeze(1).expand_as(keys)
    paper = att.score(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1) * mask
    torch.testing.assert_close(att.weights(query, keys, mask), paper, rtol=0, atol=1e-5)
