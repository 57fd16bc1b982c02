"""Metrics against known values and a naive reference SSIM; LPIPS shape/gradient sanity (random
weights) and its loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faceveil.errors import ShapeError, UsageError
from faceveil.eval import metrics as M
from faceveil.train.lpips import LPIPS


def _img(seed: int, b: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((b, 3, h // 4, w // 4), generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


# -- identical images ----------------------------------------------------------------------------

def test_identical_images():
    x = _img(0)
    assert torch.isinf(M.psnr(x, x)).all()
    assert torch.isinf(M.psnr(x, x, "y")).all()
    for f in (M.ssim, M.ms_ssim):
        assert torch.allclose(f(x, x), torch.ones(2, dtype=torch.float64))
    assert torch.equal(M.rmse255(x, x), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(M.mae255(x, x, "y"), torch.zeros(2, dtype=torch.float64))


# -- PSNR, RMSE, MAE: exact values ---------------------------------------------------------------

def test_psnr_known_noise_level():
    g = torch.Generator().manual_seed(1)
    a = torch.full((1, 3, 20, 20), 0.5, dtype=torch.float64)
    sign = torch.randint(0, 2, a.shape, generator=g).double() * 2 - 1
    for sigma, expected in ((0.01, 40.0), (0.1, 20.0), (10 / 255, 20 * math.log10(255 / 10))):
        b = a + sigma * sign
        assert M.psnr(a, b).item() == pytest.approx(expected, abs=1e-9)
        assert M.rmse255(a, b).item() == pytest.approx(255 * sigma, rel=1e-9)
        assert M.mae255(a, b).item() == pytest.approx(255 * sigma, rel=1e-9)


def test_per_image_not_pooled():
    a = torch.zeros(2, 3, 16, 16)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1] += 0.01  # MSE 1e-4 -> 40 dB
    p = M.psnr(a, b)
    assert p.tolist() == pytest.approx([20.0, 40.0])
    pooled = 10 * math.log10(1 / ((0.01 + 1e-4) / 2))
    assert p.mean().item() != pytest.approx(pooled, abs=0.1)  # 30 dB vs 22.97 dB


def test_luma_bt601():
    white = torch.ones(1, 3, 4, 4)
    assert torch.allclose(M.rgb_to_y(white), torch.ones(1, 1, 4, 4))
    a = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    b = a.clone()
    b[:, 0] += 10 / 255  # red only: Y moves by 0.299 · 10
    assert M.mae255(a, b, "y").item() == pytest.approx(2.99, rel=1e-9)
    assert M.rmse255(a, b, "y").item() == pytest.approx(2.99, rel=1e-9)
    assert M.mae255(a, b).item() == pytest.approx(10 / 3, rel=1e-9)
    assert M.psnr(a, b, "y").item() == pytest.approx(20 * math.log10(255 / 2.99), rel=1e-9)


# -- SSIM vs a straightforward reference ---------------------------------------------------------

def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 written out: at every valid 11×11 window position, Gaussian-weighted means,
    variances and covariance, the SSIM formula, then the mean; per channel, then averaged."""
    r = np.arange(11) - 5
    g = np.exp(-(r ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01) ** 2, (0.03) ** 2
    vals = []
    for ch in range(a.shape[0]):
        pa = np.lib.stride_tricks.sliding_window_view(a[ch], (11, 11))
        pb = np.lib.stride_tricks.sliding_window_view(b[ch], (11, 11))
        mu_a = (pa * w).sum(axis=(-2, -1))
        mu_b = (pb * w).sum(axis=(-2, -1))
        va = (w * (pa - mu_a[..., None, None]) ** 2).sum(axis=(-2, -1))
        vb = (w * (pb - mu_b[..., None, None]) ** 2).sum(axis=(-2, -1))
        cov = (w * (pa - mu_a[..., None, None]) * (pb - mu_b[..., None, None])).sum(axis=(-2, -1))
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_ssim_matches_reference(noise):
    a = _img(2, b=1, h=24, w=28)
    g = torch.Generator().manual_seed(3)
    b = (a + noise * torch.randn(a.shape, generator=g)).clamp(0, 1)
    ours = M.ssim(a, b).item()
    ref = _reference_ssim(a[0].double().numpy(), b[0].double().numpy())
    assert ours == pytest.approx(ref, abs=1e-10)
    y_ref = _reference_ssim(M.rgb_to_y(a.double())[0].numpy(), M.rgb_to_y(b.double())[0].numpy())
    assert M.ssim(a, b, "y").item() == pytest.approx(y_ref, abs=1e-10)


def test_ssim_and_msssim_decrease_with_noise():
    a = _img(4, b=1, h=64, w=64)
    g = torch.Generator().manual_seed(5)
    n = torch.randn(a.shape, generator=g)
    s = [M.ssim(a, (a + k * n).clamp(0, 1)).item() for k in (0.01, 0.05, 0.2)]
    ms = [M.ms_ssim(a, (a + k * n).clamp(0, 1)).item() for k in (0.01, 0.05, 0.2)]
    assert s[0] > s[1] > s[2] and ms[0] > ms[1] > ms[2]
    assert all(0 <= v <= 1 for v in s + ms)


def test_msssim_scales():
    assert M.msssim_scales(176) == 5
    assert M.msssim_scales(112) == 4
    assert M.msssim_scales(32) == 2
    assert M.msssim_scales(10) == 0


def test_bad_shapes():
    with pytest.raises(ShapeError):
        M.psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ShapeError):
        M.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))  # smaller than the window
    with pytest.raises(ValueError):
        M.image_metrics(_img(0), _img(1), ("nope",))


def test_image_metrics_keys_and_inputs_untouched():
    a, b = _img(6), _img(7)
    a0, b0 = a.clone(), b.clone()
    out = M.image_metrics(a, b)
    assert set(out) == set(M.METRICS)
    assert all(v.shape == (2,) and v.dtype == torch.float64 for v in out.values())
    assert torch.equal(a, a0) and torch.equal(b, b0)


# -- LPIPS (random weights: shapes, gradients, loader) -------------------------------------------

def test_lpips_requires_a_file():
    with pytest.raises(UsageError, match="weights"):
        LPIPS.from_file(None)
    with pytest.raises(UsageError, match="not found"):
        LPIPS.from_file("/nonexistent/vgg.pth")


@pytest.mark.parametrize("net,size", [("vgg", 32), ("alex", 64)])
def test_lpips_random_weights_shape_and_gradient(net, size):
    torch.manual_seed(0)
    lp = LPIPS(net)
    for p in lp.parameters():  # non-negative lin weights, as trained ones are
        if p.shape[0] == 1:
            p.data.abs_()
    a = _img(8, b=2, h=size, w=size).requires_grad_(True)
    b = _img(9, b=2, h=size, w=size)
    d = lp(a, b)
    assert d.shape == (2,)
    assert torch.all(d > 0)
    d.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in lp.parameters())
    assert torch.allclose(lp(b, b), torch.zeros(2), atol=1e-7)


def test_lpips_loader(tmp_path):
    torch.manual_seed(1)
    src = LPIPS("alex")  # the small backbone keeps the files small; the loader is shared
    full = tmp_path / "full.pt"
    torch.save(src.state_dict(), full)
    lp = LPIPS.from_file(full, net="alex")
    a, b = _img(10, b=2, h=64, w=64), _img(11, b=2, h=64, w=64)
    assert torch.allclose(lp(a, b), src(a, b))
    # the lpips package's layout: lin layers in one file, torchvision backbone in another
    lins = {f"lin{i}.model.1.weight": src.state_dict()[f"lin{i}.model.1.weight"] for i in range(5)}
    backbone = {k: v for k, v in src.state_dict().items() if k.startswith("features.")}
    torch.save(lins, tmp_path / "alex.pth")
    torch.save({**backbone, "classifier.1.weight": torch.zeros(2, 2)}, tmp_path / "alexnet.pth")
    with pytest.raises(UsageError, match="backbone"):
        LPIPS.from_file(tmp_path / "alex.pth", net="alex")
    lp2 = LPIPS.from_file(tmp_path / "alex.pth", backbone=tmp_path / "alexnet.pth", net="alex")
    assert torch.allclose(lp2(a, b), src(a, b))
    # sliced keys (net.slice{k}.{i}.*) as in a saved lpips.LPIPS state dict
    sliced = {**{f"net.slice1.{k.split('.', 1)[1]}": v for k, v in backbone.items()}, **lins}
    torch.save(sliced, tmp_path / "sliced.pt")
    assert torch.allclose(LPIPS.from_file(tmp_path / "sliced.pt", net="alex")(a, b), src(a, b))
    with pytest.raises(UsageError, match="do not fit"):
        LPIPS.from_file(full, net="vgg")
