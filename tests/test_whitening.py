"""BERT-whitening of frozen features (probe/whitening.py); `selfsup eval --whiten` is tested in test_eval.py."""

import torch

from selfsup.probe.whitening import fit_whitening, whiten


def test_whitening_gives_the_training_features_zero_mean_and_identity_covariance():
    g = torch.Generator().manual_seed(0)
    common = torch.randn(16, generator=g) * 5
    train = common + torch.randn(500, 16, generator=g) @ torch.randn(16, 16, generator=g)  # (N, D) one shared offset
    mu, w = fit_whitening(train)
    x = whiten(train, mu, w).double()
    torch.testing.assert_close(x.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), torch.eye(16, dtype=torch.float64), atol=1e-4, rtol=0)
    cos = lambda a: torch.nn.functional.cosine_similarity(a[:250], a[250:]).mean()  # noqa: E731
    assert cos(train) > 0.5 and abs(cos(x)) < 0.1  # the common direction is gone
    test = common + torch.randn(100, 16, generator=g)
    torch.testing.assert_close(whiten(test, mu, w), ((test.double() - mu) @ w).float())  # the training fit, applied


def test_whitening_a_feature_without_variance_stays_finite():
    x = torch.randn(50, 4)
    x[:, 2] = 3.0  # constant: zero variance
    mu, w = fit_whitening(x)
    assert torch.isfinite(whiten(x, mu, w)).all()
