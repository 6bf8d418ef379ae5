"""Vision objectives' numerics: the pure losses on embeddings (SimCLR, MoCo v2/v3, BYOL, DINO, SwAV, MAE), k-means,
EMA teachers, the momentum / warm-up schedules and the collapse monitor.

Every loss is checked against a naive reference written here with explicit Python loops straight from the
paper's formula (never by calling the code under test), against values derived by hand, and against the
properties the formula must have (invariances, limits, counts, gradients)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup.objectives.kmeans import kmeans, nearest, pca_whiten
from selfsup.objectives.losses import (
    byol_loss, dino_loss, masked_patch_loss, moco_v2_loss, moco_v3_loss, normalize_patches, nt_xent, patchify,
    sinkhorn, swav_loss,
)
from selfsup.objectives.teacher import ema_update, frozen_copy, linear_warmup, momentum_at
from selfsup.train.collapse import collapse_metrics, collapse_warning


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


# ------------------------------------------------------------------------------------ naive references


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two vectors, from its definition."""
    return (a * b).sum() / (a.pow(2).sum().sqrt() * b.pow(2).sum().sqrt())


def naive_nt_xent(z1, z2, tau, *, include_self=False, include_positive=True):
    """SimCLR eq. (1), summed over the 2B anchors: −log(exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)), j = i's other view."""
    z = [row for row in z1.double()] + [row for row in z2.double()]
    n, b = len(z), len(z1)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        j = (i + b) % n
        num = torch.exp(cos(z[i], z[j]) / tau)
        den = torch.zeros((), dtype=torch.float64)
        for k in range(n):
            if k == i and not include_self:
                continue
            if k == j and not include_positive:
                continue
            den = den + torch.exp(cos(z[i], z[k]) / tau)
        total = total - torch.log(num / den)
    return total


def naive_moco_v2(q, k, queue, tau):
    """MoCo eq. (1): −log(exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ_queue exp(q·k⁻/τ))), q and k L2-normalised."""
    total = torch.zeros((), dtype=torch.float64)
    for b in range(len(q)):
        qb = q[b].double() / q[b].double().norm()
        kb = k[b].double() / k[b].double().norm()
        pos = torch.exp(qb @ kb / tau)
        den = pos + sum(torch.exp(qb @ neg.double() / tau) for neg in queue)
        total = total - torch.log(pos / den)
    return total


def naive_moco_v3(q, k, tau):
    """MoCo v3's ctr(q, k) = 2τ · Σ_i −log(exp(q_i·k_i/τ) / Σ_j exp(q_i·k_j/τ))."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(q)):
        den = sum(torch.exp(cos(q[i].double(), k[j].double()) / tau) for j in range(len(k)))
        total = total - torch.log(torch.exp(cos(q[i].double(), k[i].double()) / tau) / den)
    return 2 * tau * total


def softmax_row(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x.double() - x.double().max())
    return e / e.sum()


def naive_dino(student, teacher, center, ts, tt):
    """DINO's official loss: for each (teacher global crop g, student crop v ≠ g), the batch mean of
    −Σ_k P_t(k) log P_s(k); then the mean over those pairs."""
    total, terms = 0.0, 0
    for g, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == g:
                continue
            per_image = []
            for b in range(t.shape[0]):
                p_t = softmax_row((t[b].double() - center.double()) / tt)
                log_p_s = torch.log(softmax_row(s[b].double() / ts))
                per_image.append(-(p_t * log_p_s).sum())
            total += sum(per_image) / len(per_image)
            terms += 1
    return total / terms


def naive_swav(scores, codes, tau):
    """SwAV's swapped prediction, summed: for each global crop g and every other crop v, Σ_b −Σ_k q_g log p_v."""
    total = 0.0
    for g, q in enumerate(codes):
        for v, s in enumerate(scores):
            if v == g:
                continue
            for b in range(q.shape[0]):
                total += -(q[b].double() * torch.log(softmax_row(s[b].double() / tau))).sum()
    return total


def naive_sinkhorn(scores, eps, iters):
    """SwAV's distributed_sinkhorn (single process), step by step."""
    Q = torch.exp(scores.double() / eps).t()  # (K, B)
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(iters):
        Q = Q / Q.sum(dim=1, keepdim=True)
        Q = Q / K
        Q = Q / Q.sum(dim=0, keepdim=True)
        Q = Q / B
    return (Q * B).t()


# ------------------------------------------------------------------------------------ NT-Xent (SimCLR)


def test_nt_xent_matches_naive_loop_over_anchors():
    z1, z2 = randn(5, 7, seed=1), randn(5, 7, seed=2)
    for tau in (0.1, 0.5, 1.0):
        loss, count = nt_xent(z1, z2, tau)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss.double(), naive_nt_xent(z1, z2, tau), rtol=1e-5, atol=1e-5)
        assert count == 10


def test_nt_xent_hand_computed_tiny_case():
    # B=2, E=2, τ=1. z1 = [e1, e2], z2 = [e1, −e2]; the 4 anchors and their cosines to the 3 others:
    #   z1[0]=e1:  e2 → 0, e1 (positive) → 1, −e2 → 0   ⇒ −log(e / (e + 2))      = log(1 + 2/e)
    #   z1[1]=e2:  e1 → 0, e1 → 0, −e2 (positive) → −1  ⇒ −log(e⁻¹ / (e⁻¹ + 2)) = log(1 + 2e)
    #   z2[0]=e1:  e1 (positive) → 1, e2 → 0, −e2 → 0   ⇒ log(1 + 2/e)
    #   z2[1]=−e2: e1 → 0, e2 (positive) → −1, e1 → 0   ⇒ log(1 + 2e)
    # total = 2·log(1 + 2/e) + 2·log(1 + 2e) = 2·0.551444… + 2·1.862000… = 4.826879…
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    expected = 2 * math.log(1 + 2 / math.e) + 2 * math.log(1 + 2 * math.e)
    loss, count = nt_xent(z1, z2, 1.0)
    assert count == 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(4.826879, abs=1e-6)


def test_nt_xent_excludes_self_similarity_but_keeps_positive():
    # Same tiny case. Including the self term (cos 1 → e in every denominator) or dropping the positive from the
    # denominator would each give a different number; only "drop self, keep positive" is right.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    loss = nt_xent(z1, z2, 1.0)[0].item()
    right = naive_nt_xent(z1, z2, 1.0).item()
    with_self = naive_nt_xent(z1, z2, 1.0, include_self=True).item()
    without_positive = naive_nt_xent(z1, z2, 1.0, include_positive=False).item()
    assert loss == pytest.approx(right, rel=1e-6)
    assert abs(with_self - right) > 0.5
    assert abs(without_positive - right) > 0.5
    # with the self term: anchor e1 would be −log(e / (e + e + 2)) = log(2 + 2/e), bigger than log(1 + 2/e)
    assert with_self > right


def test_nt_xent_symmetric_in_views_and_images():
    z1, z2 = randn(6, 5, seed=3), randn(6, 5, seed=4)
    loss = nt_xent(z1, z2, 0.3)[0]
    torch.testing.assert_close(nt_xent(z2, z1, 0.3)[0], loss)
    perm = torch.randperm(6, generator=gen(5))
    torch.testing.assert_close(nt_xent(z1[perm], z2[perm], 0.3)[0], loss)
    # permuting only one view breaks the pairing: a different loss
    assert not torch.allclose(nt_xent(z1[perm], z2, 0.3)[0], loss)


def test_nt_xent_invariant_to_scaling_each_embedding():
    z1, z2 = randn(4, 8, seed=6), randn(4, 8, seed=7)
    s1 = torch.rand(4, 1, generator=gen(8)) * 10 + 0.1
    s2 = torch.rand(4, 1, generator=gen(9)) * 10 + 0.1
    torch.testing.assert_close(nt_xent(z1 * s1, z2 * s2, 0.2)[0], nt_xent(z1, z2, 0.2)[0], rtol=1e-5, atol=1e-5)


def test_nt_xent_temperature_limits():
    B = 4
    z1, z2 = randn(B, 8, seed=10), randn(B, 8, seed=11)
    # τ → ∞: every logit → 0, each anchor is −log(1 / (2B − 1))
    loss, count = nt_xent(z1, z2, 1e6)
    assert (loss / count).item() == pytest.approx(math.log(2 * B - 1), abs=1e-4)
    # τ → 0 with each positive the most similar by a margin: the loss vanishes
    base = torch.eye(B, 8) * 5
    noise = randn(B, 8, seed=12) * 0.05
    loss, _ = nt_xent(base, base + noise, 0.01)
    assert loss.item() < 1e-6
    # ... and blows up (≈ margin/τ) when the positives are the least similar
    loss_bad, _ = nt_xent(base, -base, 0.01)
    assert loss_bad.item() > 100


def test_nt_xent_gradient_matches_naive_reference_and_finite_differences():
    z1 = randn(3, 4, seed=13).requires_grad_()
    z2 = randn(3, 4, seed=14).requires_grad_()
    loss, _ = nt_xent(z1, z2, 0.5)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    r1 = z1.detach().double().requires_grad_()
    r2 = z2.detach().double().requires_grad_()
    h1, h2 = torch.autograd.grad(naive_nt_xent(r1, r2, 0.5), (r1, r2))
    torch.testing.assert_close(g1.double(), h1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g2.double(), h2, rtol=1e-4, atol=1e-5)
    # central differences in float32 on the code itself
    h = 1e-2
    with torch.no_grad():
        for view, grad in ((z1, g1), (z2, g2)):
            for idx in [(0, 0), (1, 2), (2, 3)]:
                x0 = view[idx].item()
                view[idx] = x0 + h
                up = nt_xent(z1, z2, 0.5)[0].item()
                view[idx] = x0 - h
                down = nt_xent(z1, z2, 0.5)[0].item()
                view[idx] = x0
                assert (up - down) / (2 * h) == pytest.approx(grad[idx].item(), abs=5e-3, rel=2e-2)


def test_nt_xent_upcasts_low_precision_inputs():
    z1, z2 = randn(4, 8, seed=15), randn(4, 8, seed=16)
    loss16, _ = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.5)
    assert loss16.dtype == torch.float32
    ref = naive_nt_xent(z1.bfloat16().float(), z2.bfloat16().float(), 0.5)
    assert loss16.item() == pytest.approx(ref.item(), rel=1e-5)


# ------------------------------------------------------------------------------------ MoCo v2 / v3


def test_moco_v2_matches_naive_formula_with_positive_first():
    q, k = randn(4, 6, seed=20), randn(4, 6, seed=21)
    queue = torch.nn.functional.normalize(randn(9, 6, seed=22), dim=1)
    for tau in (0.07, 0.2, 1.0):
        loss, count = moco_v2_loss(q, k, queue, tau)
        assert count == 4
        torch.testing.assert_close(loss.double(), naive_moco_v2(q, k, queue, tau), rtol=1e-5, atol=1e-5)
    # the positive really is k (index 0): swapping it into the queue changes the loss
    other = moco_v2_loss(q, queue[:4], torch.cat([k / k.norm(dim=1, keepdim=True), queue[4:]]), 0.2)[0]
    assert not torch.allclose(other, moco_v2_loss(q, k, queue, 0.2)[0])


def test_moco_v2_hand_computed_and_invariant_to_query_scale():
    # q = e1, k = e1 (cos 1), queue = {e2, −e1} (cos 0, −1), τ = 1: −log(e / (e + 1 + e⁻¹)) = log(1 + e⁻¹ + e⁻²)
    q, k = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.5, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss, count = moco_v2_loss(q, k, queue, 1.0)
    assert count == 1
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1) + math.exp(-2)), rel=1e-6)


def test_moco_v2_detached_queue_gets_no_gradient():
    q = randn(4, 6, seed=23).requires_grad_()
    k = randn(4, 6, seed=24)
    queue = torch.nn.functional.normalize(randn(8, 6, seed=25), dim=1).requires_grad_()
    loss, _ = moco_v2_loss(q, k, queue.detach(), 0.2)
    loss.backward()
    assert queue.grad is None
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_moco_v3_equals_cross_entropy_times_two_tau():
    q, k = randn(5, 8, seed=30), randn(5, 8, seed=31)
    for tau in (0.2, 1.0):
        loss, count = moco_v3_loss(q, k, tau)
        assert count == 5
        torch.testing.assert_close(loss.double(), naive_moco_v3(q, k, tau), rtol=1e-5, atol=1e-5)
        qn = torch.nn.functional.normalize(q, dim=1)
        kn = torch.nn.functional.normalize(k, dim=1)
        ce = torch.nn.functional.cross_entropy(qn @ kn.t() / tau, torch.arange(5), reduction="sum")
        torch.testing.assert_close(loss, ce * 2 * tau, rtol=1e-5, atol=1e-5)


def test_moco_v3_two_tau_keeps_gradient_scale_independent_of_tau():
    # d loss / d cos_ij = 2τ · (softmax_ij − δ_ij) / τ = 2 (softmax_ij − δ_ij): bounded by 2 at any τ. For large τ the
    # softmax is uniform, so the gradient tends to a τ-independent limit; without the 2τ factor it would scale as 1/τ.
    B = 4
    k = torch.eye(B)  # one-hot keys: cos(q_i, k_j) is q_i's j-th coordinate
    q0 = torch.nn.functional.normalize(randn(B, B, seed=32), dim=1)
    grads = {}
    for tau in (50.0, 100.0, 1000.0):
        q = q0.clone().requires_grad_()
        moco_v3_loss(q, k, tau)[0].backward()
        grads[tau] = q.grad
    # the limit: 2 (I − q qᵀ)(1/B − e_i) for each row i
    target = torch.full((B, B), 1 / B) - torch.eye(B)
    limit = 2 * (target - (target * q0).sum(dim=1, keepdim=True) * q0)
    torch.testing.assert_close(grads[1000.0], limit, rtol=0, atol=5e-3)
    torch.testing.assert_close(grads[50.0], grads[100.0], rtol=0, atol=5e-2)
    assert grads[100.0].norm() > 0.5  # not vanishing like 1/τ


# ------------------------------------------------------------------------------------ BYOL


def test_byol_matches_squared_distance_of_normalised_vectors():
    p, z = randn(6, 5, seed=40), randn(6, 5, seed=41)
    loss, count = byol_loss(p, z)
    assert count == 6
    expected = sum(((p[b] / p[b].norm() - z[b] / z[b].norm()) ** 2).sum() for b in range(6))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_byol_extremes_and_scale_invariance():
    p = randn(3, 4, seed=42)
    assert byol_loss(p, p * 2.5)[0].item() == pytest.approx(0.0, abs=1e-5)
    loss, count = byol_loss(p, -p * 0.3)
    assert loss.item() == pytest.approx(4.0 * count, rel=1e-6)  # 4 per pair for opposite directions
    z = randn(3, 4, seed=43)
    base = byol_loss(p, z)[0]
    torch.testing.assert_close(byol_loss(p * 7.0, z * 0.01)[0], base, rtol=1e-5, atol=1e-5)
    # orthogonal → 2
    assert byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))[0].item() == pytest.approx(2.0)


# ------------------------------------------------------------------------------------ DINO


def dino_inputs(B=3, K=6, G=2, L=3, seed=50):
    student = [randn(B, K, seed=seed + v) for v in range(G + L)]
    teacher = [randn(B, K, seed=seed + 100 + g) for g in range(G)]
    center = randn(K, seed=seed + 200) * 0.3
    return student, teacher, center


def test_dino_matches_naive_pair_loop_and_paper_average():
    student, teacher, center = dino_inputs()
    loss, count = dino_loss(student, teacher, center, 0.1, 0.04)
    assert count == (2 * 5 - 2) * 3
    assert (loss / count).item() == pytest.approx(naive_dino(student, teacher, center, 0.1, 0.04).item(), rel=1e-5)


@pytest.mark.parametrize("local_crops", [0, 1, 6])
def test_dino_count_is_pairs_times_batch(local_crops):
    B = 2
    student, teacher, center = dino_inputs(B=B, G=2, L=local_crops)
    _, count = dino_loss(student, teacher, center, 0.1, 0.04)
    pairs = 2 * (2 + local_crops) - 2  # each teacher global crop against every student crop but itself
    assert count == pairs * B


def test_dino_skips_same_view_pairs():
    # One teacher crop (g = 0) and two student crops: only the pair (0, 1) counts, so student crop 0 is the only
    # same-view term; changing it arbitrarily must leave the loss unchanged.
    student, teacher, center = dino_inputs(G=1, L=1)
    loss, count = dino_loss(student, teacher, center, 0.1, 0.04)
    assert count == 1 * 3
    changed = [randn(*student[0].shape, seed=99) * 10, student[1]]
    torch.testing.assert_close(dino_loss(changed, teacher, center, 0.1, 0.04)[0], loss)
    # while the cross-view crop does matter
    changed = [student[0], randn(*student[1].shape, seed=98) * 10]
    assert not torch.allclose(dino_loss(changed, teacher, center, 0.1, 0.04)[0], loss)


def test_dino_centering_shift_invariance():
    student, teacher, center = dino_inputs()
    loss = dino_loss(student, teacher, center, 0.1, 0.05)[0]
    shift = randn(center.shape[0], seed=60) * 3
    shifted = dino_loss(student, [t + shift for t in teacher], center + shift, 0.1, 0.05)[0]
    torch.testing.assert_close(shifted, loss, rtol=1e-5, atol=1e-5)
    # the center is really subtracted: moving only it changes the loss
    assert not torch.allclose(dino_loss(student, teacher, center + shift, 0.1, 0.05)[0], loss)


def test_dino_sharper_teacher_lowers_target_entropy():
    # With the student predicting exactly the teacher's target distribution (student_temp 1, logits = log target)
    # each cross-entropy is the target's entropy, so the loss per pair is the mean target entropy.
    _, teacher, center = dino_inputs(G=2, L=0)
    teacher = [t * 0.2 for t in teacher]  # logits of the size a real head gives, so the sharpening shows

    def entropy(tt):
        targets = [torch.log_softmax((t - center) / tt, dim=-1) for t in teacher]
        student = [targets[1], targets[0]]  # each teacher crop's target predicted by the other global crop
        loss, count = dino_loss(student, teacher, center, 1.0, tt)
        return (loss / count).item()

    h_sharp, h_soft = entropy(0.04), entropy(0.07)
    assert h_sharp < h_soft < math.log(6)
    # and that entropy is the one of softmax((t − c)/τ_t), from the naive reference
    for tt, h in ((0.04, h_sharp), (0.07, h_soft)):
        rows = [softmax_row((t[b] - center) / tt) for t in teacher for b in range(t.shape[0])]
        expected = sum(-(p * p.log()).sum() for p in rows) / len(rows)
        assert h == pytest.approx(expected.item(), rel=1e-4)


# ------------------------------------------------------------------------------------ Sinkhorn / SwAV


def skewed_scores(B=32, K=8, seed=70):
    s = randn(B, K, seed=seed) * 0.3
    s[:, 0] += 1.0  # prototype 0 wins for almost every image
    return s


def test_sinkhorn_rows_and_columns():
    B, K = 32, 8
    s = skewed_scores(B, K)
    q = sinkhorn(s, 0.05, 100)
    assert q.shape == (B, K)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(B), rtol=0, atol=1e-5)
    torch.testing.assert_close(q.sum(dim=0), torch.full((K,), B / K), rtol=0, atol=1e-4)
    # after 3 iterations the rows are still exact but the columns only roughly balanced
    q3 = sinkhorn(s, 0.5, 3)
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(B), rtol=0, atol=1e-5)
    torch.testing.assert_close(q3.sum(dim=0), torch.full((K,), B / K), rtol=0, atol=0.05)


def test_sinkhorn_matches_swav_reference():
    s = randn(16, 5, seed=71) * 0.5
    for eps, iters in ((0.05, 3), (0.1, 10), (0.5, 1)):
        torch.testing.assert_close(sinkhorn(s, eps, iters).double(), naive_sinkhorn(s, eps, iters), rtol=1e-4,
                                   atol=1e-6)


def test_sinkhorn_invariant_to_constant_shift():
    s = randn(16, 5, seed=72) * 0.5
    torch.testing.assert_close(sinkhorn(s + 123.0, 0.05, 3), sinkhorn(s, 0.05, 3), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sinkhorn(s - 40.0, 0.1, 10), sinkhorn(s, 0.1, 10), rtol=1e-4, atol=1e-6)


def test_sinkhorn_enforces_equal_partition_on_skewed_scores():
    B, K = 32, 8
    s = skewed_scores(B, K)
    plain = torch.softmax(s / 0.05, dim=1).sum(dim=0)  # no balancing: prototype 0 takes nearly everything
    assert plain[0] > 0.8 * B
    error = lambda q: (q.sum(dim=0) - B / K).abs().max().item()  # noqa: E731
    e1, e10, e100 = error(sinkhorn(s, 0.05, 1)), error(sinkhorn(s, 0.05, 10)), error(sinkhorn(s, 0.05, 100))
    assert e1 > e10 > e100
    assert e1 > 1.0  # one iteration is far from balanced
    assert e100 < 1e-4  # many iterations: every prototype gets B/K


def test_sinkhorn_has_no_gradient():
    s = randn(8, 4, seed=73).requires_grad_()
    q = sinkhorn(s, 0.05, 3)
    assert not q.requires_grad


def test_swav_matches_naive_swapped_prediction():
    B, K, G, L = 4, 5, 2, 2
    scores = [randn(B, K, seed=80 + v) for v in range(G + L)]
    codes = [sinkhorn(scores[g], 0.05, 3) for g in range(G)]
    loss, count = swav_loss(scores, codes, 0.1)
    assert count == G * (G + L - 1) * B
    assert loss.item() == pytest.approx(naive_swav(scores, codes, 0.1).item(), rel=1e-5)
    # the code of crop g is never predicted from crop g itself: with one code, crop 0's scores do not matter
    codes_one = codes[:1]
    loss_one, count_one = swav_loss(scores, codes_one, 0.1)
    assert count_one == 1 * (G + L - 1) * B
    other = [randn(B, K, seed=89) * 10] + scores[1:]
    torch.testing.assert_close(swav_loss(other, codes_one, 0.1)[0], loss_one)


@pytest.mark.parametrize("G,V", [(1, 2), (2, 2), (2, 8)])
def test_swav_count(G, V):
    B = 3
    scores = [randn(B, 4, seed=v) for v in range(V)]
    codes = [torch.full((B, 4), 0.25) for _ in range(G)]
    loss, count = swav_loss(scores, codes, 0.1)
    assert count == G * (V - 1) * B


# ------------------------------------------------------------------------------------ MAE patches


def test_patchify_single_channel_row_major():
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    # 0  1 | 2  3
    # 4  5 | 6  7
    # ------+------
    # 8  9 | 10 11
    # 12 13| 14 15
    expected = torch.tensor([[[0.0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]])
    torch.testing.assert_close(patchify(img, 2), expected)


def test_patchify_channel_fastest_like_mae():
    B, C, H, W, p = 2, 3, 6, 4, 2
    img = randn(B, C, H, W, seed=90)
    out = patchify(img, p)
    assert out.shape == (B, (H // p) * (W // p), p * p * C)
    # MAE models_mae.patchify: reshape (N, C, h, p, w, p), einsum 'nchpwq->nhwpqc', reshape (N, h·w, p²·C)
    h, w = H // p, W // p
    mae = torch.einsum("nchpwq->nhwpqc", img.reshape(B, C, h, p, w, p)).reshape(B, h * w, p * p * C)
    torch.testing.assert_close(out, mae)
    # and by hand: patch t = (i, j) in row-major order, entries (row, col, channel) with channel fastest
    for t in range(h * w):
        i, j = divmod(t, w)
        entries = [img[0, c, i * p + r, j * p + s] for r in range(p) for s in range(p) for c in range(C)]
        torch.testing.assert_close(out[0, t], torch.stack(entries))


def test_normalize_patches_mean_zero_unbiased_var_one():
    x = randn(2, 5, 12, seed=91) * 4 + 3
    y = normalize_patches(x)
    torch.testing.assert_close(y.mean(dim=-1), torch.zeros(2, 5), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.var(dim=-1, unbiased=True), torch.ones(2, 5), rtol=0, atol=1e-4)
    # by hand for one patch: (x − mean) / sqrt(unbiased var + 1e-6)
    v = x[0, 0].double()
    ref = (v - v.mean()) / (((v - v.mean()) ** 2).sum() / (len(v) - 1) + 1e-6).sqrt()
    torch.testing.assert_close(y[0, 0].double(), ref, rtol=1e-5, atol=1e-6)


def test_masked_patch_loss_counts_only_masked_patches():
    B, T, D = 2, 6, 8
    patches, pred = randn(B, T, D, seed=92), randn(B, T, D, seed=93)
    mask = torch.tensor([[True, False, True, False, False, True], [False, False, True, True, False, False]])
    for norm_pix in (False, True):
        loss, count = masked_patch_loss(pred, patches, mask, norm_pix)
        assert count.item() == 5
        target = normalize_patches(patches) if norm_pix else patches
        expected = sum(((pred[b, t] - target[b, t]) ** 2).mean() for b in range(B) for t in range(T) if mask[b, t])
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        # predictions on visible patches carry no loss
        changed = torch.where(mask[..., None], pred, pred + 100.0)
        torch.testing.assert_close(masked_patch_loss(changed, patches, mask, norm_pix)[0], loss)
        changed = torch.where(mask[..., None], pred + 1.0, pred)
        assert masked_patch_loss(changed, patches, mask, norm_pix)[0] > loss


def test_masked_patch_loss_norm_pix_on_off():
    B, T, D = 2, 4, 12
    patches = randn(B, T, D, seed=94) * 3 + 5
    mask = torch.ones(B, T, dtype=torch.bool)
    # a perfect prediction of the raw pixels is perfect only without norm_pix, and the other way round
    assert masked_patch_loss(patches, patches, mask, False)[0].item() == pytest.approx(0.0, abs=1e-10)
    assert masked_patch_loss(patches, patches, mask, True)[0].item() > 1.0
    normed = normalize_patches(patches)
    assert masked_patch_loss(normed, patches, mask, True)[0].item() == pytest.approx(0.0, abs=1e-8)
    assert masked_patch_loss(normed, patches, mask, False)[0].item() > 1.0
    # with norm_pix the target ignores each patch's brightness and contrast
    scale = torch.rand(B, T, 1, generator=gen(95)) * 3 + 0.5
    shift = randn(B, T, 1, seed=96) * 10
    pred = randn(B, T, D, seed=97)
    torch.testing.assert_close(masked_patch_loss(pred, patches * scale + shift, mask, True)[0],
                               masked_patch_loss(pred, patches, mask, True)[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ k-means, PCA


def blobs(K=4, D=2, n=50, seed=0, spread=10.0, noise=0.1):
    g = gen(1000 + seed)
    centers = torch.randn(K, D, generator=g) * spread
    truth = torch.arange(K).repeat_interleave(n)
    return centers[truth] + noise * torch.randn(K * n, D, generator=g), truth


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to a relabelling: a one-to-one map between labels."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_two_separated_clusters_for_any_seed():
    x, truth = blobs(K=2, D=3)
    for seed in range(10):
        centroids, assign = kmeans(x, 2, 10, gen(seed))
        assert centroids.shape == (2, 3)
        assert same_partition(assign, truth)


def test_kmeans_is_a_lloyd_fixed_point():
    # After convergence every centroid is the mean of its points and every point sits at its nearest centroid.
    x, _ = blobs(K=4, D=5, seed=3, spread=3.0, noise=1.0)
    centroids, assign = kmeans(x, 4, 50, gen(0))
    torch.testing.assert_close(assign, nearest(x, centroids))
    for j in range(4):
        torch.testing.assert_close(centroids[j], x[assign == j].mean(dim=0), rtol=1e-5, atol=1e-5)
    # more iterations never increase the within-cluster sum of squares
    def inertia(iters):
        c, a = kmeans(x, 4, iters, gen(0))
        return ((x - c[a]) ** 2).sum().item()
    values = [inertia(i) for i in (1, 2, 5, 50)]
    assert all(b <= a + 1e-4 for a, b in zip(values, values[1:]))


def test_kmeans_recovers_four_separated_clusters_for_any_seed():
    x, truth = blobs(K=4, D=2)
    for seed in range(10):
        _, assign = kmeans(x, 4, 20, gen(seed))
        assert same_partition(assign, truth), f"seed {seed}"


def test_kmeans_recovers_four_separated_clusters_from_a_good_start():
    # a seed whose random start happens to fall in distinct clusters (checked below): Lloyd must then recover them
    x, truth = blobs(K=4, D=2)
    for seed in range(50):
        start = torch.randperm(len(x), generator=gen(seed))[:4]
        if len(set(truth[start].tolist())) == 4:
            break
    else:
        pytest.fail("no good start found")
    _, assign = kmeans(x, 4, 20, gen(seed))
    assert same_partition(assign, truth)


def test_kmeans_no_empty_cluster_with_duplicate_points():
    # 95 copies of one point: the random start almost surely picks several identical centroids
    x = torch.cat([torch.zeros(95, 2), torch.tensor([[1.0, 0], [2, 0], [3, 0], [4, 0], [5, 0]])])
    for seed in range(5):
        _, assign = kmeans(x, 6, 10, gen(seed))
        counts = torch.bincount(assign, minlength=6)
        assert (counts > 0).all(), counts.tolist()
    x = torch.cat([torch.zeros(90, 2), randn(10, 2, seed=5) + 5])
    for seed in range(5):
        _, assign = kmeans(x, 5, 10, gen(seed))
        assert (torch.bincount(assign, minlength=5) > 0).all()


def test_kmeans_deterministic_for_generator_seed():
    x, _ = blobs(K=5, D=4, seed=7, spread=2.0, noise=1.0)
    c1, a1 = kmeans(x, 5, 10, gen(42))
    c2, a2 = kmeans(x, 5, 10, gen(42))
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    c3, _ = kmeans(x, 5, 0, gen(43))
    c4, _ = kmeans(x, 5, 0, gen(42))
    assert not torch.equal(c3, c4)  # the seed chooses the start


def test_kmeans_too_few_points_raises():
    with pytest.raises(ValueError, match="at least as many points as clusters"):
        kmeans(torch.zeros(3, 2), 4, 5, gen(0))


def test_nearest_matches_brute_force():
    x, c = randn(300, 6, seed=100) * 2, randn(7, 6, seed=101) * 2
    brute = torch.tensor([min(range(7), key=lambda j: ((x[i] - c[j]) ** 2).sum().item()) for i in range(300)])
    assert torch.equal(nearest(x, c), brute)
    assert torch.equal(nearest(x, c, chunk=16), brute)  # chunking changes nothing


def test_pca_whiten_identity_covariance_and_truncation():
    mix = randn(6, 6, seed=102)
    x = randn(2000, 6, seed=103) @ mix + 3.0
    y = pca_whiten(x, 3)
    assert y.shape == (2000, 3)
    torch.testing.assert_close(y.mean(dim=0), torch.zeros(3), rtol=0, atol=1e-4)
    cov = y.t() @ y / (len(y) - 1)
    torch.testing.assert_close(cov, torch.eye(3), rtol=0, atol=1e-3)
    assert pca_whiten(x, 10).shape == (2000, 6)  # dim larger than D keeps D


def test_pca_whiten_keeps_the_top_axes_in_order():
    # Axis-aligned data with known, well separated standard deviations: the whitened columns must be the three
    # largest axes, largest first (each up to its sign), each divided by its own standard deviation.
    scales = torch.tensor([0.1, 5.0, 0.5, 3.0, 0.2, 1.5])
    x = randn(4000, 6, seed=104) * scales + randn(6, seed=105)
    y = pca_whiten(x, 3)
    xc = x - x.mean(dim=0)
    for col, axis in enumerate([1, 3, 5]):
        corr = (y[:, col] * xc[:, axis]).mean() / (y[:, col].std() * xc[:, axis].std())
        assert abs(corr.item()) > 0.99, (col, axis, corr.item())
        assert y[:, col].std().item() == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------------------------ EMA teacher


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.head = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.head(self.bn(self.lin(x)))


def test_frozen_copy_requires_no_grad_and_is_independent():
    torch.manual_seed(0)
    student = Net()
    teacher = frozen_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr()


def test_ema_update_exact_formula_and_batchnorm_stats_untouched():
    torch.manual_seed(0)
    student = Net()
    teacher = frozen_copy(student)
    with torch.no_grad():  # make the two networks differ
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=gen(1)))
    student.train()
    student(randn(16, 4, seed=2) * 3 + 1)  # moves the student's running statistics
    teacher_stats = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k or "batches" in k}
    before = [p.clone() for p in teacher.parameters()]
    m = 0.9
    ema_update(teacher, (student,), m)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * s, rtol=0, atol=1e-6)
        assert not t.requires_grad
    for k, v in teacher.state_dict().items():
        if k in teacher_stats:
            assert torch.equal(v, teacher_stats[k]), k
    assert not torch.equal(teacher.bn.running_mean, student.bn.running_mean)
    # momentum 1 leaves the teacher alone; momentum 0 copies the student
    snapshot = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, (student,), 1.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), snapshot))
    ema_update(teacher, (student,), 0.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s)


def test_ema_update_several_student_modules_in_order():
    torch.manual_seed(1)
    backbone, head = nn.Linear(4, 5), nn.Linear(5, 2)
    teacher = frozen_copy(nn.Sequential(backbone, head))
    with torch.no_grad():
        for p in list(backbone.parameters()) + list(head.parameters()):
            p.mul_(-2.0).add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, (backbone, head), 0.5)
    online = list(backbone.parameters()) + list(head.parameters())
    for t, t0, s in zip(teacher.parameters(), before, online):
        torch.testing.assert_close(t, 0.5 * t0 + 0.5 * s)
    with pytest.raises(AssertionError):
        ema_update(teacher, (backbone,), 0.5)


# ------------------------------------------------------------------------------------ schedules


def test_momentum_at_cosine_from_base_to_one():
    base, steps = 0.996, 1000
    assert momentum_at(0, steps, base) == pytest.approx(base)
    assert momentum_at(steps, steps, base) == pytest.approx(1.0)
    assert momentum_at(2 * steps, steps, base) == pytest.approx(1.0)  # stays at 1 past the end
    # BYOL: τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2; at half way it is the mean of base and 1
    assert momentum_at(steps // 2, steps, base) == pytest.approx((base + 1) / 2)
    assert momentum_at(250, steps, base) == pytest.approx(1 - (1 - base) * (math.cos(math.pi / 4) + 1) / 2)
    values = [momentum_at(s, steps, base) for s in range(0, steps + 1, 10)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert all(base <= v <= 1 for v in values)


def test_linear_warmup_endpoints():
    assert linear_warmup(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(1000, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(0, 0, 0.04, 0.07) == pytest.approx(0.07)  # no warm-up
    values = [linear_warmup(s, 30, 0.04, 0.07) for s in range(40)]
    assert all(b >= a for a, b in zip(values, values[1:]))


# ------------------------------------------------------------------------------------ collapse monitor


def test_collapse_healthy_gaussian_embeddings():
    B, D, E = 256, 32, 16
    x = randn(B, D, seed=110)
    z1, z2 = randn(B, E, seed=111), randn(B, E, seed=112)
    m = collapse_metrics((x,), (z1, z2))
    assert m["rankme"] > 0.8 * D
    assert m["std"] == pytest.approx(1 / math.sqrt(E), rel=0.1)
    assert m["alignment"] == pytest.approx(2.0, abs=0.2)  # independent views: E‖a − b‖² = 2
    assert m["uniformity"] < -3.0
    assert collapse_warning(m, (x,), (z1, z2)) is None
    # identical views: perfect alignment
    m_same = collapse_metrics((x,), (z1, z1 * 3.0))
    assert m_same["alignment"] == pytest.approx(0.0, abs=1e-10)


def test_collapse_complete_collapse_warns():
    B, D, E = 64, 32, 16
    x = randn(1, D, seed=113).expand(B, D) + 1e-6 * randn(B, D, seed=114)
    z = randn(1, E, seed=115).expand(B, E) + 1e-6 * randn(B, E, seed=116)
    m = collapse_metrics((x,), (z, z))
    assert m["std"] < 1e-4
    assert m["uniformity"] == pytest.approx(0.0, abs=1e-6)  # every pair at distance 0
    warning = collapse_warning(m, (x,), (z, z))
    assert warning is not None and "std" in warning
    # exactly identical rows: no spread at all, effective rank 1
    same = randn(1, D, seed=117).expand(B, D).contiguous()
    m = collapse_metrics((same,))
    assert m["rankme"] == pytest.approx(1.0, abs=1e-3)
    assert "effective rank" in collapse_warning(m, (same,))


def test_collapse_rank_one_dimensional_collapse_warns():
    B, D = 128, 32
    u, v = randn(B, 1, seed=118), randn(1, D, seed=119)
    x = u @ v + 3.0
    m = collapse_metrics((x,))
    assert m["rankme"] == pytest.approx(1.0, abs=0.05)
    warning = collapse_warning(m, (x,))
    assert warning is not None and "effective rank" in warning
    # rank 4: rankme between 1 and 4
    x4 = randn(B, 4, seed=120) @ randn(4, D, seed=121)
    assert 1.5 < collapse_metrics((x4,))["rankme"] <= 4.0 + 1e-3
