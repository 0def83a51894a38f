"""Mu-law companding: exact inverse, kurtosis init."""
import torch

from lvq import companding as C


def test_round_trip_and_range():
    x = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    for mu in (1e-2, 10.0, 255.0):
        y = C.compress(x, mu)
        assert float(y.abs().max()) <= 1 + 1e-12
        assert torch.allclose(C.expand(y, mu), x, atol=1e-12)


def test_compression_expands_small_values():
    x = torch.tensor([0.01, 0.1])
    y = C.compress(x, 255.0)
    assert bool((y > 3 * x).all())


def test_expand_differentiable_in_mu():
    mu = torch.tensor(20.0, requires_grad=True)
    C.expand(torch.tensor([0.5, -0.3]), mu).sum().backward()
    assert mu.grad is not None and torch.isfinite(mu.grad)


def test_kurtosis_init_grows_with_tails():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(20000, generator=g)
    lap = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    student = torch.distributions.StudentT(3.0).sample((20000,))
    mus = [C.init_mu(x, 10.0, 255.0) for x in (gauss, lap, student)]
    assert abs(C.kurtosis(gauss) - 3) < 0.2
    assert mus[0] < mus[1] < mus[2] <= 255.0
    assert mus[0] >= 10.0
