"""The registered veils (pre-obfuscators): pure, deterministic, shape-keeping, size-scaled, visible,
and strict about their parameters."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from faceveil.errors import FaceveilError, VeilError
from faceveil.obfuscate import VEILS, apply_veil, get_veil
from faceveil.obfuscate.registry import REFERENCE_SIZE

ALL_VEILS = sorted(VEILS)
#: The filter veils of PRO-Face S (size-scaled parameters, an ellipse/square region); the cartoon
#: veil's parameters are fractions of the crop and it draws its own round sticker.
FILTERS = ["blur", "median", "pixelate"]


def with_region(name: str, region: str) -> dict:
    """``{"region": region}`` for the veils that have that parameter, ``{}`` for the others."""
    return {"region": region} if "region" in get_veil(name).defaults(112) else {}
GROUP_JPG = Path(__file__).resolve().parents[2] / "examples" / "group.jpg"
# A face crop of examples/group.jpg (the astronaut; the crop the pipeline chooses for her face).
FACE_CROP = (190, 134, 340, 284)
# A veil must be plainly visible: PSNR(veiled, original) well below what a viewer would call "the
# same picture" (~40 dB).
VISIBLE_CEILING_DB = 32.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """A real 150×150 face crop, 1×3×H×W float32 in [0, 1]."""
    from PIL import Image

    with Image.open(GROUP_JPG) as im:
        a = np.asarray(im.convert("RGB").crop(FACE_CROP), dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float().div(255.0)


def textured(h: int, w: int, seed: int = 0, batch: int = 1, dtype=torch.float32) -> torch.Tensor:
    """Smooth gradients plus noise: structure at every scale, values inside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h)[:, None]
    xx = torch.linspace(0, 1, w)[None, :]
    base = torch.stack([yy * xx, (1 - yy) * xx, 0.5 + 0.4 * torch.sin(9 * yy + 7 * xx)])
    x = 0.6 * base[None] + 0.4 * torch.rand((batch, 3, h, w), generator=g)
    return x.clamp(0, 1).to(dtype)


def numeric(params: dict) -> dict:
    return {k: v for k, v in params.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def test_the_three_paper_veils_are_registered():
    assert {"blur", "pixelate", "median"} <= set(VEILS)
    for name in ALL_VEILS:
        v = get_veil(name)
        assert v.name == name and v.summary and v.param_help
        assert set(v.defaults(REFERENCE_SIZE)) <= set(v.param_help) | {"region"}


def test_unknown_veil_is_a_faceveil_error():
    with pytest.raises(VeilError, match="unknown veil 'smudge'.*blur"):
        get_veil("smudge")
    with pytest.raises(FaceveilError):
        apply_veil(textured(32, 32), "smudge")


@pytest.mark.parametrize("name", ALL_VEILS)
def test_deterministic(name, face):
    y1, p1 = apply_veil(face, name)
    y2, p2 = apply_veil(face.clone(), name)
    assert p1 == p2
    assert torch.equal(y1, y2)
    # also with explicit (non-default) parameters and the square region
    params = {**get_veil(name).sample(random.Random(3), 150), **with_region(name, "square")}
    assert torch.equal(apply_veil(face, name, params)[0], apply_veil(face, name, params)[0])


@pytest.mark.parametrize("name", ALL_VEILS)
def test_training_samples_are_reproducible_and_accepted(name):
    v = get_veil(name)
    a = [v.sample(random.Random(7), 96) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = random.Random(1)
    for _ in range(5):
        p = v.sample(rng, 96)
        y, full = apply_veil(textured(96, 96), name, p)
        assert full == {**v.defaults(96), **p}
        assert y.shape == (1, 3, 96, 96)


@pytest.mark.parametrize("name", ALL_VEILS)
@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 150, 150), (1, 90, 126), (1, 126, 90), (1, 8, 8),
                                   (1, 300, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_shape_dtype_and_range(name, shape, dtype):
    b, h, w = shape
    x = textured(h, w, batch=b, dtype=dtype)
    y, params = apply_veil(x, name)
    assert y.shape == x.shape
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1
    assert params == get_veil(name).defaults(min(h, w))


@pytest.mark.parametrize("name", ALL_VEILS)
def test_batch_items_are_veiled_independently(name):
    x = textured(64, 64, batch=3, seed=5)
    y, _ = apply_veil(x, name)
    for i in range(3):
        assert torch.allclose(y[i:i + 1], apply_veil(x[i:i + 1], name)[0], atol=1e-6)


@pytest.mark.parametrize("name", ALL_VEILS)
@pytest.mark.parametrize("region", ["ellipse", "square"])
def test_does_not_mutate_its_input(name, region, face):
    x = face.clone()
    before = x.clone()
    y, _ = apply_veil(x, name, with_region(name, region))
    assert torch.equal(x, before)
    assert y.data_ptr() != x.data_ptr()
    y.fill_(0.5)  # the output is not a view of the input either
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", ALL_VEILS)
def test_works_with_autograd_without_touching_the_input(name):
    x = textured(48, 48).requires_grad_(True)
    y, _ = apply_veil(x, name, {"region": "square"} if name == "blur" else None)
    assert y.shape == x.shape
    if y.requires_grad:  # blur and pixelate are differentiable
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", FILTERS)
def test_parameters_scale_with_face_size(name):
    v = get_veil(name)
    ref = numeric(v.defaults(REFERENCE_SIZE))
    assert ref, f"{name} has no size parameter"
    for size in (56, 224, 448):
        got = numeric(v.defaults(size))
        assert set(got) == set(ref)
        for k, r in ref.items():
            want = r * size / REFERENCE_SIZE
            # integer parameters are rounded (and kernels made odd): allow that, no more
            assert abs(got[k] - want) <= 1.5 + 0.01 * want, (k, size, got[k], want)
    # monotone in the size
    sizes = [16, 32, 64, 112, 200, 400, 800]
    for k in ref:
        values = [numeric(v.defaults(s))[k] for s in sizes]
        assert values == sorted(values) and values[-1] > values[0], (k, values)


@pytest.mark.parametrize("name", FILTERS)
def test_apply_picks_the_parameters_of_the_crop_size(name):
    small = apply_veil(textured(56, 56), name)[1]
    large = apply_veil(textured(224, 224), name)[1]
    for k, v in numeric(small).items():
        assert large[k] > v
    # the smaller side decides for a non-square crop
    assert apply_veil(textured(56, 224), name)[1] == get_veil(name).defaults(56)


def test_paper_settings_at_112_px():
    assert get_veil("blur").defaults(112) == {"sigma": 8.0, "kernel": 21, "region": "ellipse"}
    assert get_veil("pixelate").defaults(112) == {"block": 9, "region": "ellipse"}
    assert get_veil("median").defaults(112) == {"kernel": 15, "region": "ellipse"}
    assert get_veil("blur").defaults(200)["kernel"] % 2 == 1  # blur kernels stay odd


@pytest.mark.parametrize("name", ALL_VEILS)
@pytest.mark.parametrize("region", ["ellipse", "square"])
def test_changes_the_face_visibly(name, region, face):
    y, _ = apply_veil(face, name, with_region(name, region))
    assert psnr(y, face) < VISIBLE_CEILING_DB
    # the face in the middle of the crop is what must be hidden: it is changed most
    c = slice(40, 110)
    assert psnr(y[..., c, c], face[..., c, c]) < VISIBLE_CEILING_DB


@pytest.mark.parametrize("name", ALL_VEILS)
def test_changes_a_large_face_visibly(name, face):
    big = torch.nn.functional.interpolate(face, size=(448, 448), mode="bilinear", align_corners=False)
    y, _ = apply_veil(big, name)
    assert psnr(y, big) < VISIBLE_CEILING_DB


@pytest.mark.parametrize("name", FILTERS)
def test_ellipse_keeps_the_corners_and_square_does_not(name, face):
    ye, _ = apply_veil(face, name)
    ys, _ = apply_veil(face, name, {"region": "square"})
    k = 10  # 10×10 px corners of a 150 px crop lie outside the inscribed ellipse's ramp
    for sl in [(slice(0, k), slice(0, k)), (slice(0, k), slice(-k, None)), (slice(-k, None), slice(0, k)),
               (slice(-k, None), slice(-k, None))]:
        assert torch.equal(ye[..., sl[0], sl[1]], face[..., sl[0], sl[1]])
    assert not torch.equal(ys[..., :k, :k], face[..., :k, :k])


@pytest.mark.parametrize("name", FILTERS)
def test_constant_image_stays_constant(name):
    x = torch.full((1, 3, 40, 40), 0.3)
    y, _ = apply_veil(x, name, {"region": "square"})
    assert torch.allclose(y, x, atol=1e-5)


BAD_PARAMS = [
    ("blur", {"sigma": 0}),
    ("blur", {"sigma": -2.0}),
    ("blur", {"sigma": float("nan")}),
    ("blur", {"sigma": float("inf")}),
    ("blur", {"kernel": 4}),
    ("blur", {"kernel": 0}),
    ("blur", {"kernel": -3}),
    ("blur", {"sigma": "wide"}),
    ("blur", {"kernel": "big"}),
    ("blur", {"kernel": float("inf")}),
    ("blur", {"sigma": None}),
    ("blur", {"radius": 3}),
    ("blur", {"region": "circle"}),
    ("pixelate", {"block": 0}),
    ("pixelate", {"block": -4}),
    ("pixelate", {"block": "x"}),
    ("pixelate", {"block": None}),
    ("pixelate", {"region": 3}),
    ("pixelate", {"size": 9}),
    ("pixelate", {"region": ""}),
    ("median", {"kernel": 0}),
    ("median", {"kernel": -1}),
    ("median", {"kernel": "k"}),
    ("median", {"kernel": True}),
    ("median", {"kernel": float("nan")}),
    ("median", {"sigma": 3}),
    ("median", {"region": "triangle"}),
]


@pytest.mark.parametrize(("name", "params"), BAD_PARAMS, ids=[f"{n}-{p}" for n, p in BAD_PARAMS])
def test_rejects_bad_parameters_with_a_faceveil_error(name, params):
    x = textured(32, 32)
    before = x.clone()
    with pytest.raises(VeilError) as ei:
        apply_veil(x, name, params)
    assert isinstance(ei.value, FaceveilError)
    assert ei.value.exit_code != 0
    assert "\n" not in str(ei.value) and str(ei.value)
    assert torch.equal(x, before)


@pytest.mark.parametrize("bad", [
    np.zeros((1, 3, 8, 8), np.float32),  # not a tensor
    torch.zeros(3, 8, 8),  # no batch dimension
    torch.zeros(1, 1, 8, 8),  # grey
    torch.zeros(1, 4, 8, 8),  # RGBA
    torch.zeros(1, 3, 8, 8, dtype=torch.uint8),  # not floating point
], ids=["numpy", "3d", "grey", "rgba", "uint8"])
@pytest.mark.parametrize("name", ALL_VEILS)
def test_rejects_bad_images_with_a_faceveil_error(name, bad):
    with pytest.raises(VeilError):
        apply_veil(bad, name)


@pytest.mark.parametrize("name", FILTERS)
def test_partial_parameters_fill_in_the_rest(name):
    v = get_veil(name)
    _, full = apply_veil(textured(112, 112), name, {"region": "square"})
    assert full == {**v.defaults(112), "region": "square"}
    k = next(iter(numeric(v.defaults(112))))
    _, full = apply_veil(textured(112, 112), name, {k: 5})
    assert full[k] == 5 and full["region"] == "ellipse"


@pytest.mark.parametrize("name", FILTERS)
def test_stronger_parameters_hide_more(name, face):
    v = get_veil(name)
    k = "sigma" if name == "blur" else next(iter(numeric(v.defaults(150))))
    weak = {k: 2} if name != "blur" else {"sigma": 1.5, "kernel": 7}
    strong = {k: 24} if name != "blur" else {"sigma": 16.0, "kernel": 49}
    p_weak = psnr(apply_veil(face, name, {**weak, "region": "square"})[0], face)
    p_strong = psnr(apply_veil(face, name, {**strong, "region": "square"})[0], face)
    assert p_strong < p_weak


def test_strength_scales_the_size_defaults():
    import torch

    from faceveil.errors import VeilError
    from faceveil.obfuscate import VEILS, apply_veil

    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    for name, veil in VEILS.items():
        _, p1 = apply_veil(x, name)
        _, p2 = apply_veil(x, name, strength=2.0)
        assert p1 == veil.defaults(112) and p2 == veil.defaults(224), name
    y1, _ = apply_veil(x, "blur")
    y2, _ = apply_veil(x, "blur", strength=2.0)
    # a stronger blur leaves less detail: the mean gradient drops
    assert y2.diff(dim=-1).abs().mean() < y1.diff(dim=-1).abs().mean()
    _, explicit = apply_veil(x, "pixelate", {"block": 5}, strength=3.0)
    assert explicit["block"] == 5  # explicit parameters are taken as given
    for bad in (0.1, 5, float("nan"), float("inf"), True, "2"):
        with pytest.raises(VeilError, match="strength"):
            apply_veil(x, "blur", strength=bad)


# -- cartoon ---------------------------------------------------------------------------------------

def test_cartoon_designs_are_distinct_and_cached():
    from faceveil.obfuscate.cartoon import N_STICKERS, design, render

    assert N_STICKERS >= 100
    assert len({design(i) for i in range(N_STICKERS)}) == N_STICKERS
    a = render(0, 64)
    assert a.shape == (64, 64, 4) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert render(0, 64) is a  # cached
    # a round sticker: opaque centre, transparent corners
    assert a[32, 32, 3] > 0.99 and a[0, 0, 3] == 0
    looks = {render(i, 48).tobytes() for i in range(0, N_STICKERS, 7)}
    assert len(looks) == len(range(0, N_STICKERS, 7))
    with pytest.raises(VeilError):
        design(N_STICKERS)


def test_cartoon_covers_the_inner_face_and_keeps_the_corners(face):
    y, p = apply_veil(face, "cartoon")
    assert p == get_veil("cartoon").defaults(150)
    c = slice(50, 100)  # eyes, nose and mouth lie here in the FACE_CROP of the astronaut
    assert psnr(y[..., c, c], face[..., c, c]) < 15
    assert torch.equal(y[..., :8, :8], face[..., :8, :8])


def test_cartoon_moves_scales_and_rotates(face):
    base = apply_veil(face, "cartoon")[0]
    for change in ({"cx": 0.3}, {"cy": 0.7}, {"scale": 0.4}, {"angle": 30.0}, {"sticker": 17}):
        assert not torch.equal(apply_veil(face, "cartoon", change)[0], base), change
    small = apply_veil(face, "cartoon", {"scale": 0.3})[0]
    changed = (small - face).abs().sum(1)[0] > 1e-4
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert ys.float().mean().sub(0.52 * 150).abs() < 3 and xs.float().mean().sub(75).abs() < 3
    assert changed.sum() < 0.1 * 150 * 150  # a 0.3-crop disc covers ~7 % of the crop
    # a quarter turn of a sticker whose design is symmetric only left-right moves its features
    turned = apply_veil(face, "cartoon", {"angle": 90.0})[0]
    assert psnr(turned, base) < 25


@pytest.mark.parametrize("params", [
    {"sticker": -1}, {"sticker": 10_000}, {"sticker": 1.5}, {"sticker": "a"}, {"scale": 0.0},
    {"scale": 10.0}, {"cx": float("nan")}, {"angle": float("inf")}, {"cy": 5.0}, {"region": "square"},
])
def test_cartoon_rejects_bad_parameters(params, face):
    with pytest.raises(VeilError):
        apply_veil(face, "cartoon", params)


def test_cartoon_placement_follows_the_landmarks():
    from faceveil.obfuscate.cartoon import placement

    # a frontal face in a 200 px crop: eyes at y=80, mouth at y=130, inter-ocular 60 px
    lm = np.array([[70, 80], [130, 80], [100, 105], [78, 130], [122, 130]], float)
    p = placement(lm, 200, 200)
    assert abs(p["cx"] - 0.5) < 1e-3 and abs(p["angle"]) < 1e-6
    assert 0.45 < p["cy"] < 0.55 and abs(p["scale"] - 2.6 * 60 / 200) < 1e-3
    # the same face turned 20 degrees counter-clockwise in the image (y grows downwards)
    t = math.radians(20)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    turned = (lm - 100) @ rot.T + 100
    q = placement(turned, 200, 200)
    assert abs(q["angle"] - 20) < 0.1 and abs(q["scale"] - p["scale"]) < 1e-3
    # shifted right by 30 px
    assert abs(placement(lm + [30, 0], 200, 200)["cx"] - 0.65) < 1e-3
