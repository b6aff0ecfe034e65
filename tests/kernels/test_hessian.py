"""Hutchinson trace estimates against exact traces; the HAWQ-V2 and Fisher sensitivity formulas."""
from __future__ import annotations

import torch

from bitsmith.kernels.hessian import (fisher_sensitivity, hawq_sensitivity, hutchinson_traces,
                                      input_hessian_trace, rademacher_like)

torch.set_num_threads(1)


def _quadratic(dims: list[int], seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """f(x) = ½ xᵀ A x over the concatenation of blocks shaped `dims`, A symmetric positive definite."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(dims)
    m = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a = m @ m.T / n + torch.diag(torch.rand(n, generator=gen, dtype=torch.float64) * 3)
    xs = [torch.randn(d, generator=gen, dtype=torch.float64, requires_grad=True) for d in dims]
    return xs, [torch.zeros(d, dtype=torch.float64) for d in dims], a


def _hvp_of(xs: list[torch.Tensor], a: torch.Tensor):
    x = torch.cat(xs)
    grads = torch.autograd.grad(0.5 * x @ a @ x, xs, create_graph=True)

    def hvp(vs: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.autograd.grad(grads, xs, grad_outputs=vs, retain_graph=True))
    return hvp


def test_hutchinson_matches_exact_block_traces_on_a_quadratic() -> None:
    dims = [30, 50, 20]
    xs, _, a = _quadratic(dims)
    traces, samples = hutchinson_traces(_hvp_of(xs, a), xs, rel_tol=0.01, min_samples=16, max_samples=4000,
                                        generator=torch.Generator().manual_seed(1))
    offsets = [0, 30, 80, 100]
    exact = [float(torch.trace(a[offsets[i]:offsets[i + 1], offsets[i]:offsets[i + 1]])) for i in range(3)]
    for got, want in zip(traces, exact):
        assert abs(got - want) / want < 0.05, (got, want, samples)
    assert samples < 4000  # stopped on the tolerance, not the cap


def test_hutchinson_on_a_diagonal_hessian_is_exact_with_one_probe() -> None:
    # vᵀ D v = Σ d_i v_i² = Tr(D) for every Rademacher v: zero variance, stops at min_samples.
    d = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    x = torch.ones(4, dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(0.5 * (d * x * x).sum(), [x], create_graph=True)
    traces, samples = hutchinson_traces(lambda vs: list(torch.autograd.grad(grad, [x], vs, retain_graph=True)),
                                        [x], rel_tol=1e-6, min_samples=3, max_samples=50)
    assert samples == 3
    assert abs(traces[0] - 10.0) < 1e-12


def test_rademacher_is_plus_minus_one() -> None:
    v = rademacher_like(torch.empty(10_000), torch.Generator().manual_seed(0))
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(v.mean())) < 0.05


def test_sensitivity_formulas() -> None:
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    q = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    assert hawq_sensitivity(8.0, 4, float(((w - q) ** 2).sum())) == 8.0 / 4 * (1.0 + 0.25)
    f = torch.tensor([[1.0, 2.0], [4.0, 8.0]])
    assert fisher_sensitivity(f, w, q) == 0.5 * (2.0 * 1.0 + 4.0 * 0.25)
    h_in = torch.diag(torch.tensor([1.0, 3.0]))
    assert input_hessian_trace(h_in, out_features=5) == 20.0
