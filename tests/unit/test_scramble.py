"""The keyed wavelet scramble of format version 2 (nn/scramble.py): an exact, orthonormal, self-
inverse transform for any crop size, whose signs come from the password and never from the network;
a scrambling network and the photo pipeline round-trip with it, and without the signs recovery
yields only the scrambled face."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from faceveil.errors import ShapeError
from faceveil.keys import derive_master_key, new_salt
from faceveil.models.registry import ARCHITECTURES, build
from faceveil.nn import scramble as S
from faceveil.nn.haar import dwt, iwt
from faceveil.nn.inn import INNConfig

CHEAP = {"name": "scrypt", "n": 1024, "r": 8, "p": 1}


def signs_like(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(x.dtype)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), seed=st.integers(0, 2 ** 16))
def test_transform_is_exact_orthonormal_and_self_inverse(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
    c = S.forward(x)
    assert c.shape == x.shape
    assert torch.allclose(S.inverse(c), x, atol=1e-12, rtol=0)
    assert torch.allclose(c.pow(2).sum(), x.pow(2).sum(), rtol=1e-10)  # energy: errors keep their size
    s = signs_like(x, seed)
    xs = S.scramble(x, s)
    assert torch.allclose(S.scramble(xs, s), x, atol=1e-12, rtol=0)
    assert torch.equal(x, x.clone())


@pytest.mark.parametrize("h,w", [(112, 112), (96, 96), (130, 66), (2048, 1536), (17, 9), (8, 8)])
def test_coarse_band_is_at_most_8_by_8(h, w):
    levels = S.levels_for(h, w)
    ch, cw = h, w
    for _ in levels:
        ch, cw = (ch + 1) // 2, (cw + 1) // 2
    assert max(ch, cw) <= S.COARSE_SIDE


def test_constant_image_lives_in_the_coarse_band_only():
    x = torch.full((1, 1, 64, 64), 0.75, dtype=torch.float64)
    c = S.forward(x - 0.5)
    assert len(S.levels_for(64, 64)) == 3  # 64 -> 32 -> 16 -> 8
    assert c[..., 8:, :].abs().max() < 1e-12 and c[..., :, 8:].abs().max() < 1e-12
    assert torch.allclose(c[..., :8, :8], torch.full((1, 1, 8, 8), 0.25 * 8, dtype=torch.float64))


def test_scrambled_face_keeps_nothing_of_the_image_structure(rng):
    """A smooth image (what a face mostly is) scrambles to something uncorrelated with it."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 112), torch.linspace(0, 1, 112), indexing="ij")
    x = torch.stack([0.5 + 0.4 * torch.sin(6 * xx) * torch.cos(4 * yy)] * 3)[None].double()
    xs = S.scramble(x, signs_like(x, 3))
    a, b = (x - x.mean()).flatten(), (xs - xs.mean()).flatten()
    assert abs(float(a @ b / (a.norm() * b.norm()))) < 0.1
    assert torch.allclose(S.scramble(xs, signs_like(x, 3)), x, atol=1e-12)


def test_wrong_shapes_are_refused():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ShapeError):
        S.scramble(x, torch.ones(1, 1, 16, 16))
    with pytest.raises(ShapeError):
        S.scramble(x, torch.ones(1, 3, 16, 18))


def test_signs_come_from_their_own_key_stream():
    m = derive_master_key("pw", new_salt(), CHEAP)
    k = m.secret_map(2, 40, 56, scramble=True)
    assert k.shape == (1, 4, 40, 56) and set(k.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(k[:, :1], m.secret_map(2, 40, 56)), "channel 0 is the version-1 secret map"
    bits = m.scramble_bits(2, 40, 56)
    assert bits.shape == (3, 40, 56) and 0.45 < bits.mean() < 0.55
    # independent of the map: no channel of signs equals or mirrors the map
    for c in range(1, 4):
        agree = float((k[:, c] == k[:, 0]).float().mean())
        assert 0.45 < agree < 0.55
    assert not np.array_equal(bits, m.scramble_bits(3, 40, 56))


def test_scrambling_network_round_trips_and_needs_the_signs(rng):
    from tests.unit.test_nn import randomise

    net = build("proface-s-scramble").double()
    randomise(net, rng)
    assert net.key_channels == 4 and ARCHITECTURES["proface-s"].scramble is False
    x = torch.rand(2, 3, 32, 48, generator=rng, dtype=torch.float64)
    y = torch.rand(2, 3, 32, 48, generator=rng, dtype=torch.float64)
    k = (torch.randint(0, 2, (2, 4, 32, 48), generator=rng) * 2 - 1).double()
    with pytest.raises(ShapeError, match="scramble"):
        net.protect(x, y, k[:, :1])
    y_hat, _ = net.protect(x, y, k)
    # exact inverse in float when the by-product is supplied
    K = net.secret_map(k, x)
    Xs, Ys = net.flow(dwt(S.scramble(x, k[:, 1:])), dwt(y), K)
    assert torch.allclose(iwt(Ys), y_hat, atol=1e-12)
    Xr, _ = net.flow(Xs, Ys, K, rev=True)
    assert torch.allclose(S.scramble(iwt(Xr), k[:, 1:]), x, atol=1e-10)
    # recover() unscrambles with a full key; with the map alone it returns the raw payload
    full, _ = net.recover(y_hat, k)
    raw, _ = net.recover(y_hat, k[:, :1])
    assert torch.allclose(S.scramble(raw, k[:, 1:]), full, atol=1e-10)
    # pre-scrambled input (the photo pipeline's tiled path) gives the same protected image
    y_hat2, _ = net.protect(S.scramble(x, k[:, 1:]), y, k[:, :1], scrambled=True)
    assert torch.allclose(y_hat, y_hat2, atol=1e-12)


def test_scramble_needs_a_keyed_network():
    with pytest.raises(ValueError, match="keyed"):
        INNConfig.from_dict({"keyed": False, "scramble": True})
    assert INNConfig.from_dict({}).scramble is False  # version-1 weights files load unchanged


@pytest.mark.parametrize(("arch", "veil", "index"), [("proface-s-scramble", "blur", 1),
                                                    ("proface-s-residual", "pixelate", 0)])
def test_photo_pipeline_scrambles_whole_crops_then_tiles(rng, monkeypatch, arch, veil, index):
    """The pipeline scrambles a crop's payload once (the face, format 2; the residual, format 3)
    and hides it tile by tile: the result must equal one untiled pass of the network with the full
    key, and recovery (both reverse branches, tiled) must mirror an untiled recover()."""
    from faceveil import pipeline
    from faceveil.detect.geometry import CropBox
    from faceveil.models.zoo import LoadedModel
    from faceveil.obfuscate import apply_veil
    from tests.unit.test_nn import randomise

    net = build(arch)
    randomise(net, rng, std=0.01)
    net.eval()
    lm = LoadedModel(name=f"test-{arch}", net=net, sha256="00" * 32)
    monkeypatch.setattr(pipeline, "TILE", 32)  # 80-px crop -> 3×3 tiles
    master = derive_master_key("pw", new_salt(), CHEAP)
    crop = (np.random.default_rng(index).random((80, 80, 3)) * 255).astype(np.uint8)
    plan = pipeline.FacePlan(index=index, box=(0.0, 0.0, 80.0, 80.0), crop=CropBox(0, 0, 80, 80), veil=veil)
    prot, params = pipeline.protect_face(crop, plan, master, lm)
    x = pipeline.to_tensor(crop)
    k = master.secret_map(index, 80, 80, scramble=True)
    with torch.inference_mode():
        y, _ = apply_veil(x, veil, params)
        whole = pipeline.to_uint8(net.protect(x, y, k)[0])
        rec_whole = pipeline.to_uint8(net.recover(pipeline.to_tensor(prot), k)[0])
    assert np.abs(prot.astype(int) - whole.astype(int)).max() <= 1  # float summation order only
    rec = pipeline.recover_face(prot, index, master, lm)
    assert np.abs(rec.astype(int) - rec_whole.astype(int)).max() <= 1


# -- format 3: the scrambled residual --------------------------------------------------------------

def test_residual_network_round_trips_through_the_veil_branch(rng):
    """A residual network hides S(0.5 + x − y) and recovers y̌ + S(p̌) − 0.5: with the true
    by-product the flow is exact, so both branches come back and so does x."""
    from tests.unit.test_nn import randomise

    net = build("proface-s-residual").double()
    randomise(net, rng)
    assert net.key_channels == 4 and net.config.format_version == 3
    assert build("proface-s-scramble").config.format_version == 2 and build("proface-s").config.format_version == 1
    x = torch.rand(2, 3, 32, 48, generator=rng, dtype=torch.float64)
    y = torch.rand(2, 3, 32, 48, generator=rng, dtype=torch.float64)
    k = (torch.randint(0, 2, (2, 4, 32, 48), generator=rng) * 2 - 1).double()
    p = net.payload(x, y, k[:, 1:])
    assert torch.allclose(p, S.scramble(x - y + 0.5, k[:, 1:]), atol=1e-12)
    assert torch.allclose((p - 0.5).pow(2).sum(), (x - y).pow(2).sum(), rtol=1e-10)  # energy kept
    y_hat, _ = net.protect(x, y, k)
    K = net.secret_map(k, x)
    Xs, Ys = net.flow(dwt(p), dwt(y), K)
    assert torch.allclose(iwt(Ys), y_hat, atol=1e-12)
    Xr, Yr = net.flow(Xs, Ys, K, rev=True)
    assert torch.allclose(iwt(Yr), y, atol=1e-10)
    assert torch.allclose(net.unpayload(iwt(Xr), iwt(Yr), k[:, 1:]), x, atol=1e-10)
    # recover(): with the full key, y̌ + S(p̌) − 0.5; with the map alone, the raw payload and y̌
    full, y_rec = net.recover(y_hat, k)
    raw, y_rec2 = net.recover(y_hat, k[:, :1])
    assert torch.allclose(y_rec, y_rec2) and torch.allclose(y_rec + S.scramble(raw, k[:, 1:]) - 0.5, full, atol=1e-10)
    y_hat2, _ = net.protect(p, y, k[:, :1], scrambled=True)
    assert torch.allclose(y_hat, y_hat2, atol=1e-12)
    # the payload of a blurred face is far smaller than the scrambled face itself
    face = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=rng, dtype=torch.float64),
                                           size=64, mode="bilinear", align_corners=False)
    from faceveil.obfuscate import apply_veil

    blurred, _ = apply_veil(face.float(), "blur")
    s = signs_like(face)
    assert (net.payload(face, blurred.double(), s) - 0.5).pow(2).mean() < 0.2 * (S.scramble(face, s) - 0.5).pow(2).mean()


def test_residual_needs_a_scrambling_network():
    with pytest.raises(ValueError, match="scramble"):
        INNConfig.from_dict({"residual": True})
    assert INNConfig.from_dict({"scramble": True}).residual is False  # version-2 weights load unchanged
