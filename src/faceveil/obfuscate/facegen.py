"""faceveil's own face generator: faces of nobody, for the ``synthetic`` and ``mask`` veils.

The pose-consistency paper (``pose-consistent-anonymity.txt``, "Network Model") draws a random
identity as a StyleGAN latent and decodes it; IMN's Mask-net (``imn.txt`` §2.1) sharpens its
swapped "Mask" face with GPEN. Neither StyleGAN, nor GPEN, nor their licences are available
offline, so faceveil trains a small equivalent of both on its own training faces
(``tools/make_facegen.py``, UTKFace; research data, so the file carries that restriction):

* **Latent space and decoder** (the StyleGAN slot): a linear appearance model. Every training face
  is thin-plate-warped onto one five-point template (pose removed), cut to the face region and
  reduced to 64×64; principal component analysis gives a mean face, ``K`` orthonormal components
  and their standard deviations. A latent ``z ~ N(0, I)`` (one per identity seed; truncated by
  ``psi`` like StyleGAN's ψ) decodes to ``mean + Σ_k z_k σ_k u_k``: a face of the training
  distribution that is nobody's (nothing in it belongs to one face; a random ``z`` in 96
  dimensions is far from every training face's own coordinates).
* **Enhancer** (the GPEN slot): a small U-Net trained to turn a 64-px latent reconstruction,
  upsampled to 128 px, into the real 128-px face it came from (L1 + multi-scale gradient loss, in
  the face region). It gives generated faces the sharpness and skin detail the linear decoder
  lacks.

Everything lives in one safetensors file whose sha256 is checked on load (``facegen.json``).
Coordinates: the template is in pixels of the 128-px canvas, pixel centres at integers.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VeilError

MODEL_DIR = "models"
MANIFEST = "facegen.json"
FORMAT = "faceveil-facegen"
FORMAT_VERSION = 1
CANVAS = 128  # the enhanced face's side
LATENT_SIDE = 64  # the linear model's side


class Enhancer(nn.Module):
    """A three-level U-Net that adds detail: ``out = inp + f(inp)``, clamped to [0, 1] in eval mode
    (unclamped while training, so a saturated pixel still gets a gradient).

    Shape: ``B×3×H×W`` (H, W multiples of 8) -> the same."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2))

        self.e1, self.e2, self.e3 = block(3, w), block(w, 2 * w), block(2 * w, 3 * w)
        self.mid = block(3 * w, 3 * w)
        self.d3, self.d2, self.d1 = block(6 * w, 2 * w), block(4 * w, w), block(2 * w, w)
        self.out = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.e1(x)
        e2 = self.e2(F.avg_pool2d(e1, 2))
        e3 = self.e3(F.avg_pool2d(e2, 2))
        m = self.mid(F.avg_pool2d(e3, 2))
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        d3 = self.d3(torch.cat([up(m), e3], 1))
        d2 = self.d2(torch.cat([up(d3), e2], 1))
        d1 = self.d1(torch.cat([up(d2), e1], 1))
        out = x + self.out(d1)
        return out if self.training else out.clamp(0, 1)


class FaceModel:
    """The linear latent model and the enhancer (float32, read-only after loading).

    ``mean`` ``1×3×64×64``, ``basis`` ``K×3×64×64`` (orthonormal over the face region, zero
    outside), ``sigma`` ``K``, ``region`` ``1×1×64×64`` (the modelled face region), ``template``
    5×2 (landmarks of the 128-px canvas)."""

    def __init__(self, tensors: dict[str, Tensor], meta: dict) -> None:
        self.mean = tensors["mean"].float()
        self.basis = tensors["basis"].float()
        self.sigma = tensors["sigma"].float()
        self.region = tensors["region"].float()
        self.template = tensors["template"].double().numpy()
        self.template.setflags(write=False)
        self.meta = meta
        self.enhancer = Enhancer(int(meta.get("enhancer_width", 32)))
        self.enhancer.load_state_dict({k[len("enhancer."):]: v.float() for k, v in tensors.items()
                                       if k.startswith("enhancer.")})
        self.enhancer.eval()
        for p in self.enhancer.parameters():
            p.requires_grad_(False)

    @property
    def dims(self) -> int:
        return int(self.sigma.numel())

    def project(self, aligned64: Tensor) -> Tensor:
        """Latent coordinates (in units of σ) of 64-px template-aligned faces. ``B×3×64×64`` -> ``B×K``."""
        d = (aligned64.float() - self.mean) * self.region
        return torch.einsum("bchw,kchw->bk", d, self.basis) / self.sigma

    def decode(self, z: Tensor) -> Tensor:
        """``B×K`` latents -> ``B×3×64×64`` faces (the linear decoder, not clamped)."""
        return self.mean + torch.einsum("bk,kchw->bchw", z.float() * self.sigma, self.basis)

    @torch.no_grad()
    def render(self, z: Tensor) -> Tensor:
        """Latents -> enhanced ``B×3×128×128`` faces in [0, 1] on the template."""
        low = F.interpolate(self.decode(z).clamp(0, 1), size=(CANVAS, CANVAS), mode="bilinear",
                            align_corners=False)
        return self.enhancer(low)

    @torch.no_grad()
    def enhance(self, aligned128: Tensor) -> Tensor:
        """GPEN's slot: a 128-px template-aligned face, reduced to 64 px and restored."""
        low = F.interpolate(F.interpolate(aligned128.float(), size=(LATENT_SIDE, LATENT_SIDE), mode="area"),
                            size=(CANVAS, CANVAS), mode="bilinear", align_corners=False)
        return self.enhancer(low)


def sample_latent(model: FaceModel, seed: int, psi: float, components: int | None = None) -> Tensor:
    """The latent of identity ``seed``: ``psi · N(0, I)`` from a generator seeded with it, in the
    first ``components`` (default all) principal directions and 0 in the rest. ``1×K``.

    Independent draws in the weak, high-order components combine into implausible faces (stray
    shadows, doubled features); the leading components carry face shape and layout, the enhancer
    the detail."""
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn((1, model.dims), generator=g, dtype=torch.float64).float() * float(psi)
    if components is not None:
        z[:, int(components):] = 0
    return z


def draw_away(model: FaceModel, seed: int, psi: float, components: int, z_orig: Tensor, max_cos: float,
              tries: int = 64) -> Tensor:
    """The paper's identity term (``L_id``: far from the original, towards a random identity), in
    latent space, by rejection: for each original (``B×K`` latents ``z_orig``), the first of the
    identities ``seed, seed + 1, …`` whose latent has cosine at most ``max_cos`` with the
    original's, both taken in the first ``components`` directions (the last try if none does).

    Rejection, not projection: a latent is only ever *chosen*, never moved towards or against the
    original, because subtracting the original's direction paints its negative — its glasses,
    moles and shadows, inverted — into the new face. Shape: -> ``B×K``."""
    zo = z_orig[:, :components].double()
    zo = zo / zo.norm(dim=1, keepdim=True).clamp_min(1e-9)
    out = torch.empty(z_orig.shape[0], model.dims)
    todo = list(range(z_orig.shape[0]))
    for t in range(tries):
        z = sample_latent(model, seed + t, psi, components)
        c = (z[:, :components].double() / z[:, :components].double().norm().clamp_min(1e-9)) @ zo.T
        keep = [i for i in todo if float(c[0, i]) <= max_cos or t == tries - 1]
        for i in keep:
            out[i] = z[0]
        todo = [i for i in todo if i not in keep]
        if not todo:
            break
    return out


def _files():
    return resources.files("faceveil.obfuscate").joinpath(MODEL_DIR)


@functools.lru_cache(maxsize=1)
def load_face_model() -> FaceModel:
    """The shipped generator, checked against the sha256 in its manifest.

    Raises:
        VeilError: the file is missing, damaged or of an unknown format."""
    from safetensors.torch import load as load_bytes

    folder = _files()
    try:
        manifest = json.loads(folder.joinpath(MANIFEST).read_text(encoding="utf-8"))
        data = folder.joinpath(manifest["file"]).read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VeilError(f"the face generator cannot be read ({e}); reinstall faceveil") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise VeilError("the face generator has an unknown format; reinstall faceveil")
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise VeilError(f"the face generator {manifest['file']} fails its sha256 check; reinstall faceveil")
    try:
        model = FaceModel(load_bytes(data), manifest)
    except (KeyError, RuntimeError, ValueError) as e:
        raise VeilError(f"the face generator does not match its manifest ({e}); reinstall faceveil") from None
    return model
