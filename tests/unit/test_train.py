"""Training: the objectives of PRO-Face S §IV-E / IMN §2.4 and our wrong-key hardening, the config
reader, and the loop itself (a few steps on generated images, checkpoint, exact resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceveil.errors import UsageError
from faceveil.models.zoo import _read_header
from faceveil.train.config import LossConfig, load_config
from faceveil.train.losses import (IMNLoss, ProFaceSLoss, decorr_reference, detail_corr2, msgrad_distance, msssim_distance,
                                   quantize_ste, range_excess, triplet)
from faceveil.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[2]


def _textured(n: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth random images with fine detail (a stand-in for faces)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, size // 8, size // 8), generator=g)
    base = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.8 * base + 0.2 * torch.rand((n, 3, size, size), generator=g)).clamp(0, 1)


# -- objectives ----------------------------------------------------------------------------------

def test_quantize_ste_rounds_forward_and_passes_gradient_straight_through():
    t = torch.tensor([-0.2, 0.1234, 0.5, 1.3], requires_grad=True)
    q = quantize_ste(t)
    assert torch.allclose(q, torch.round(t.detach().clamp(0, 1) * 255) / 255)
    q.sum().backward()
    assert torch.equal(t.grad, torch.ones(4))


def test_detail_corr2_sees_copies_and_negatives_but_not_noise_or_blur():
    x = _textured()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    blurred = torch.nn.functional.avg_pool2d(x, 7, stride=1, padding=3)
    same, inverted = detail_corr2(x, x), detail_corr2(1 - x, x)
    assert same.shape == (2,)
    assert torch.all(same > 0.9)
    assert torch.allclose(inverted, same, atol=1e-5)  # sign-blind: an inverted face is no escape
    assert torch.all(detail_corr2(noise, x) < 0.05)
    assert torch.all(detail_corr2(blurred, x) < same)
    assert torch.all(detail_corr2(torch.full_like(x, 0.5), x) < 1e-3)  # flat: no structure


def test_residual_decorrelation_allows_the_veil_and_catches_coarse_leaks():
    # what the veil removed (x − y) is the reference: a copy of x shares it at every scale, the
    # veil not at the fine scales, noise at none; a wrong-key output that carries x's coarse
    # layout (4x4 blocks of x under noise) only shows up once the coarse scales are included
    x = _textured(2, 96, seed=3)
    y = torch.nn.functional.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
    ref = decorr_reference(x, y, "residual")
    assert torch.equal(ref, x - y) and torch.equal(decorr_reference(x, y, "x"), x)
    noise = torch.rand_like(x)
    coarse = (0.5 * torch.nn.functional.avg_pool2d(x, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
              + 0.5 * noise)
    assert (detail_corr2(x, ref, scales=4) > 0.7).all()
    assert (detail_corr2(y, ref, scales=1) < 0.02).all()
    assert (detail_corr2(noise, ref, scales=4) < 0.06).all()
    assert (detail_corr2(coarse, ref, scales=4) > 5 * detail_corr2(coarse, ref, scales=1)).all()
    with pytest.raises(ValueError, match="decorrelation target"):
        decorr_reference(x, y, "veil")


def test_range_excess_is_zero_inside_and_linear_outside():
    t = torch.tensor([[[[0.0, 1.0], [1.5, -0.5]]]])
    assert torch.allclose(range_excess(t), torch.tensor([0.25]))
    assert range_excess(torch.rand(2, 3, 4, 4)).abs().max() == 0


def test_triplet_is_a_hinge():
    d = lambda a, b: (a - b).abs().flatten(1).mean(1)  # noqa: E731
    a = torch.zeros(1, 1, 2, 2)
    assert triplet(d, a, a, a + 2.0, margin=1.0).item() == 0.0
    assert triplet(d, a, a + 0.5, a + 0.5, margin=1.0).item() == pytest.approx(1.0)


@pytest.mark.parametrize("dist", [msgrad_distance, msssim_distance])
def test_perceptual_distances_vanish_on_equal_images_and_grow_with_damage(dist):
    x = _textured(size=64)
    small = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    big = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert torch.all(dist(x, x).abs() < 1e-4)
    assert torch.all(dist(small, x) < dist(big, x))


def _terms(cfg: LossConfig, x_wrong: torch.Tensor) -> dict[str, torch.Tensor]:
    x = _textured(seed=1)
    y = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
    return ProFaceSLoss(cfg)(x, y, y, x, x_wrong)


def test_randwr_paper_loss_rewards_out_of_range_blobs_and_the_hardened_one_does_not():
    """The failure the hardening fixes: with the paper's L1 triplet, a wrong-key output that is the
    face itself plus far-out-of-range blobs scores better than honest noise."""
    x = _textured(seed=1)
    blobs = x.clone()
    blobs[..., :12, :12] = 40.0  # a saturated corner: the face is intact elsewhere
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    paper = LossConfig(wr_mode="randwr")
    assert _terms(paper, blobs)["wr"] < _terms(paper, noise)["wr"]
    hard = LossConfig(wr_mode="randwr", wr_clamp=True, wr_pixel_triplet=False, lambda_decorr=1.0,
                      lambda_range=1.0)
    tb, tn = _terms(hard, blobs), _terms(hard, noise)
    assert "wr_tri_l1" not in tb and tb["wr_range"] > 1.0 and tn["wr_range"] == 0
    assert tb["wr_decorr"] > 0.5 > 0.05 > tn["wr_decorr"]
    assert tb["loss"] > tn["loss"]


def test_obfswr_pulls_the_wrong_key_output_to_the_veil():
    x = _textured(seed=1)
    y = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
    loss = ProFaceSLoss(LossConfig(wr_mode="obfswr"))
    at_veil, at_face = loss(x, y, y, x, y), loss(x, y, y, x, x)
    assert at_veil["wr_to_veil"] == 0
    assert at_face["wr"] > at_veil["wr"]


def test_imn_loss_weights_embedding_recovery_and_low_band():
    x, y = _textured(seed=1), _textured(seed=2)
    t = IMNLoss(LossConfig(imn_weights=[1.0, 3.0, 1.0]))(x, y, y, x)
    assert t["embedding"] == 0 and t["recover"] == 0 and t["low_freq"] == 0
    t = IMNLoss(LossConfig(imn_weights=[1.0, 3.0, 1.0]))(x, y, x, y)
    assert t["loss"] == pytest.approx(float(t["embedding"] + 3 * t["recover"] + t["low_freq"]), rel=1e-5)


# -- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.name and cfg.optim.steps > 0
    if cfg.init:  # a later stage starts from a run directory, never from a shipped file that moves
        assert cfg.init.startswith("runs/")


def test_config_rejects_unknown_keys_and_applies_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  lamda_wr: 1\n")
    with pytest.raises(UsageError, match="lamda_wr"):
        load_config(bad)
    with pytest.raises(UsageError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    cfg = load_config(None, {"optim.steps": 7, "loss.wr_mode": "obfswr"})
    assert cfg.optim.steps == 7 and cfg.loss.wr_mode == "obfswr"
    for key, value in (("loss.wr_mode", "randWR"), ("loss.decorr_target", "veil"), ("loss.pixel", "l3")):
        with pytest.raises(UsageError, match=key):
            load_config(None, {key: value})


# -- the loop ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for sub, n in (("faces", 10), ("natural", 2)):
        (root / sub).mkdir()
        for i in range(n):
            img = _textured(1, 64, seed=int(rng.integers(1 << 30)))[0]
            arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(root / sub / f"{i:02d}.png")
    return root


def _cfg(data: Path, out: Path, steps: int):
    return load_config(None, {
        "name": "tiny", "out_dir": str(out), "threads": 1, "log_every": 1, "val_every": 2,
        "ckpt_every": 1, "data.faces": [str(data / "faces")], "data.natural": [str(data / "natural")],
        "data.holdout": 2, "data.patch": 16, "data.crop_min": 24, "data.crop_max": 32,
        "optim.batch": 2, "optim.steps": steps, "optim.warmup": 1,
        "loss.wr_clamp": True, "loss.lambda_decorr": 0.1, "loss.lambda_range": 1.0,
        "loss.decorr_target": "residual", "loss.decorr_scales": 2, "data.val_large": 32,
    })


def test_training_runs_checkpoints_and_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    import faceveil.train.loop as loop

    real = loop.fixed_validation_set
    monkeypatch.setattr(loop, "fixed_validation_set", lambda pools, cfg, **kw: real(pools, cfg, n=4, size=32))

    straight = Trainer(_cfg(tiny_data, tmp_path / "a", 3))
    straight.run()
    first = Trainer(_cfg(tiny_data, tmp_path / "b", 3))
    first.run(max_steps=2)
    assert first.step == 2
    resumed = Trainer(_cfg(tiny_data, tmp_path / "b", 3))
    assert resumed.step == 2
    resumed.run()
    assert resumed.step == 3
    for (k, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), k

    run = tmp_path / "b" / "tiny"
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    vals = [r for r in lines if "val_recover" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and "wr_decorr" in r for r in steps)
    assert {"val_protect", "val_wrong_vs_x", "val_wrong_detail", "val_large_wrong_detail", "score"} <= set(vals[-1])
    meta = _read_header(run / "best.safetensors")
    assert meta["faceveil.wr_mode"] == "randwr"
    assert json.loads(meta["faceveil.train_config"])["loss"]["lambda_decorr"] == 0.1
    assert (run / "config.yaml").exists() and (run / "last.pt").exists()


def test_scrambling_model_trains_and_exports_its_config(tiny_data, tmp_path, monkeypatch):
    """The format-version-2 network trains with 4-channel keys (map + scramble signs) and its
    weights file says it scrambles, so loading it gives a scrambling network."""
    import faceveil.train.loop as loop
    from faceveil.models.zoo import load_model

    real = loop.fixed_validation_set
    monkeypatch.setattr(loop, "fixed_validation_set", lambda pools, cfg, **kw: real(pools, cfg, n=4, size=32))
    cfg = _cfg(tiny_data, tmp_path, 2)
    cfg.model = "proface-s-scramble"
    tr = Trainer(cfg)
    assert tr.net.key_channels == 4
    tr.run()
    rec = [json.loads(s) for s in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rec if "loss" in r)
    lm = load_model(str(tmp_path / "tiny" / "best.safetensors"))
    assert lm.net.config.scramble and lm.net.key_channels == 4
