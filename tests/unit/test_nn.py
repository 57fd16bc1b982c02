"""The invertible network: Haar round trip, exact inverse with real (randomised) weights,
no mutation of inputs, and the papers' parameter counts."""

import pytest
import torch

from faceveil.errors import ShapeError
from faceveil.models.registry import ARCHITECTURES, build
from faceveil.nn.coupling import KeyedAffineCoupling
from faceveil.nn.haar import dwt, iwt
from faceveil.nn.inn import HidingNet, INNConfig, count_parameters

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def randomise(net: torch.nn.Module, gen: torch.Generator, std: float = 0.02) -> None:
    """Zero-initialised last convolutions make a fresh net the identity: the inverse test would
    then prove nothing. Give every parameter a random value."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_haar_round_trip_and_orthonormal(dtype, rng):
    x = torch.rand(2, 3, 10, 14, generator=rng, dtype=dtype)
    z = dwt(x)
    assert z.shape == (2, 12, 5, 7)
    assert torch.allclose(iwt(z), x, atol=TOL[dtype], rtol=0)
    assert torch.allclose(z.pow(2).sum(), x.pow(2).sum(), rtol=1e-6)  # energy preserved


def test_haar_bands_of_constant_image():
    z = dwt(torch.full((1, 1, 4, 4), 3.0))
    ll, hl, lh, hh = z.chunk(4, dim=1)
    assert torch.allclose(ll, torch.full_like(ll, 6.0))
    for band in (hl, lh, hh):
        assert band.abs().max() == 0


def test_haar_rejects_odd_sizes():
    with pytest.raises(ShapeError):
        dwt(torch.zeros(1, 3, 5, 6))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", ["proface-s", "imn-small"])
def test_network_inverse_with_random_weights(dtype, arch, rng):
    cfg = ARCHITECTURES["proface-s"] if arch == "proface-s" else INNConfig(
        blocks=4, with_cover_scale=False, keyed=False)
    net = HidingNet(cfg).to(dtype)
    randomise(net, rng)
    x = torch.rand(2, 3, 16, 24, generator=rng, dtype=dtype)
    y = torch.rand(2, 3, 16, 24, generator=rng, dtype=dtype)
    k = (torch.randint(0, 2, (2, 1, 16, 24), generator=rng) * 2 - 1).to(dtype) if cfg.keyed else None
    x0, y0 = x.clone(), y.clone()
    K = net.secret_map(k, x)
    X, Y = net.flow(dwt(x), dwt(y), K)
    assert not torch.allclose(iwt(Y), y, atol=1e-3), "random weights must change the image"
    Xr, Yr = net.flow(X, Y, K, rev=True)
    assert (iwt(Xr) - x).abs().max() < TOL[dtype]
    assert (iwt(Yr) - y).abs().max() < TOL[dtype]
    assert torch.equal(x, x0) and torch.equal(y, y0), "inputs must not be mutated"


def test_coupling_inverse_and_no_mutation(rng):
    blk = KeyedAffineCoupling(12, 4).double()
    randomise(blk, rng)
    X = torch.randn(1, 12, 6, 6, generator=rng, dtype=torch.float64)
    Y = torch.randn(1, 12, 6, 6, generator=rng, dtype=torch.float64)
    K = torch.randn(1, 4, 6, 6, generator=rng, dtype=torch.float64)
    copies = [t.clone() for t in (X, Y, K)]
    X1, Y1 = blk((X, Y), K)
    X2, Y2 = blk((X1, Y1), K, rev=True)
    assert (X2 - X).abs().max() < 1e-10 and (Y2 - Y).abs().max() < 1e-10
    for t, c in zip((X, Y, K), copies):
        assert torch.equal(t, c)


def test_fresh_network_is_identity():
    net = build("proface-s")
    x, y = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    y_hat, _ = net.protect(x, y, torch.ones(1, 1, 8, 8))
    assert torch.allclose(y_hat, y, atol=1e-6)


def test_parameter_counts_match_the_papers():
    assert count_parameters(build("proface-s")) == 1_073_040  # PRO-Face S Table V
    assert count_parameters(build("imn")) == 4_050_240  # IMN / PRO-Face S Table V: 4.05M


def test_key_changes_the_output(rng):
    net = build("proface-s")
    randomise(net, rng, 0.02)
    x, y = torch.rand(1, 3, 8, 8, generator=rng), torch.rand(1, 3, 8, 8, generator=rng)
    k = torch.ones(1, 1, 8, 8)
    a, _ = net.protect(x, y, k)
    b, _ = net.protect(x, y, -k)
    assert (a - b).abs().max() > 1e-3


def test_keyed_model_requires_a_key():
    net = build("proface-s")
    with pytest.raises(ShapeError):
        net.protect(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), None)
    with pytest.raises(ShapeError):
        net.protect(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.ones(1, 1, 4, 4))


def test_recover_substitutes_kkk_for_keyed_models():
    net = build("proface-s")
    k = torch.ones(1, 1, 8, 8)
    aux = net.auxiliary(torch.zeros(1, 3, 8, 8), dwt(k))
    assert aux.shape == (1, 12, 4, 4)
    assert torch.equal(aux[:, :4], dwt(k)) and torch.equal(aux[:, 4:8], dwt(k))


@torch.no_grad()
def test_tiled_application_equals_whole_image(rng):
    from faceveil.nn.tiling import tiled_apply

    net = HidingNet(INNConfig(blocks=1))  # radius 22 px keeps the test small
    randomise(net, rng)
    h, w = 70, 54
    x, y = torch.rand(1, 3, h, w, generator=rng), torch.rand(1, 3, h, w, generator=rng)
    k = (torch.randint(0, 2, (1, 1, h, w), generator=rng) * 2 - 1).float()
    halo = net.receptive_radius
    whole, _ = net.protect(x, y, k)
    pieces = tiled_apply(lambda a, b, c: net.protect(a, b, c)[0], [x, y, k], tile=16, halo=halo)
    assert (pieces - whole).abs().max() < 1e-5
    rec_whole, _ = net.recover(whole, k)
    rec_tiles = tiled_apply(lambda a, c: net.recover(a, c)[0], [whole, k], tile=20, halo=halo)
    assert (rec_tiles - rec_whole).abs().max() < 1e-5
    # a halo that is too small is detectably different: the test can fail
    short = tiled_apply(lambda a, b, c: net.protect(a, b, c)[0], [x, y, k], tile=16, halo=2)
    assert (short - whole).abs().max() > 1e-4
