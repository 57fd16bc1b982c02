"""Password -> secret maps, stronger than PRO-Face S §IV-A eq. (5)-(6).

The paper derives the ±1 map k with PBKDF2, a constant salt and 10 iterations. faceveil instead:

1. ``salt``: 16 random bytes per protected image, stored in the file.
2. ``master = scrypt(password, salt, n=2^16, r=8, p=1)`` — memory-hard (64 MiB) and slow
   (≥ 0.1 s per guess on a 2-core machine), so a stolen file cannot be brute-forced cheaply.
3. ``verifier = HMAC-SHA256(HKDF(master, "verifier"))``, stored in the file, lets recovery tell a
   wrong password from a right one without ever storing the key.
4. For face ``i`` with a crop of ``h×w`` pixels: ``subkey = HKDF(master, "secret map" ‖ i ‖ h ‖ w)``,
   then ``SHAKE-256(subkey)`` streams ``h·w`` bits, read row-major into the ±1 map k (eq. (5)).
   ``K = DWT(k)`` (eq. (6)) happens inside the network.
5. For a scrambling network (format versions 2 and 3): ``SHAKE-256(HKDF(master, "scramble" ‖ i ‖ h ‖ w))``
   streams ``3·h·w`` more bits, the ±1 sign of every wavelet coefficient of the crop's three colour
   channels (:mod:`faceveil.nn.scramble`) — of the face (2) or of its residual ``x − y`` (3) — a key
   independent of k.

The password and every derived key live only in memory; nothing here logs them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import unicodedata
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ContainerError, UsageError

DOMAIN = b"faceveil/v1 "
SALT_BYTES = 16
MASTER_BYTES = 32
DEFAULT_KDF = {"name": "scrypt", "n": 2 ** 16, "r": 8, "p": 1}
# Bounds on KDF parameters read from a file: enough for any sane setting, not a memory bomb.
MAX_SCRYPT_MEMORY = 1 << 30  # bytes (128·n·r)
MAX_SCRYPT_P = 16


def normalize_password(password: str | bytes) -> bytes:
    """UTF-8 of the NFC-normalised password (so the same text typed on any system gives the same
    key); bytes pass through unchanged."""
    if isinstance(password, bytes):
        raw = password
    elif isinstance(password, str):
        raw = unicodedata.normalize("NFC", password).encode("utf-8")
    else:
        raise UsageError("the password must be a string")
    if not raw:
        raise UsageError("the password is empty")
    return raw


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def check_kdf_params(kdf: dict) -> dict:
    """Validate KDF parameters (from our defaults or from a file); returns a clean copy."""
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise ContainerError(f"unsupported key derivation {kdf.get('name') if isinstance(kdf, dict) else kdf!r}")
    try:
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    except (KeyError, TypeError, ValueError):
        raise ContainerError("scrypt parameters n, r, p are missing or not integers") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or p > MAX_SCRYPT_P or 128 * n * r > MAX_SCRYPT_MEMORY:
        raise ContainerError(f"scrypt parameters out of range (n={n}, r={r}, p={p})")
    return {"name": "scrypt", "n": n, "r": r, "p": p}


def hkdf(key: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """HKDF-SHA256 (RFC 5869): extract then expand."""
    prk = hmac.new(salt or b"\x00" * 32, key, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


@dataclass(frozen=True)
class MasterKey:
    """The stretched key of one protected image. Never stored, never logged."""

    key: bytes

    def __repr__(self) -> str:  # keep it out of logs and tracebacks
        return "MasterKey(<secret>)"

    @property
    def verifier(self) -> str:
        """Hex tag stored in the file; reveals nothing usable about the key (HMAC of a derived key)."""
        vk = hkdf(self.key, DOMAIN + b"verifier key")
        return hmac.new(vk, DOMAIN + b"password verifier", hashlib.sha256).hexdigest()

    def matches(self, stored_verifier: str) -> bool:
        return hmac.compare_digest(self.verifier, str(stored_verifier))

    def map_bits(self, index: int, height: int, width: int) -> np.ndarray:
        """``height×width`` uint8 array of the face's secret bits (0/1), row-major from SHAKE-256."""
        if index < 0 or height < 1 or width < 1:
            raise ValueError("face index and crop size must be positive")
        info = DOMAIN + b"secret map" + struct.pack(">III", index, height, width)
        sub = hkdf(self.key, info)
        n = height * width
        stream = hashlib.shake_256(sub).digest((n + 7) // 8)
        bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:n]
        return bits.reshape(height, width)

    def scramble_bits(self, index: int, height: int, width: int) -> np.ndarray:
        """``3×height×width`` uint8 array of the face's scramble bits (0/1), from SHAKE-256."""
        if index < 0 or height < 1 or width < 1:
            raise ValueError("face index and crop size must be positive")
        info = DOMAIN + b"scramble" + struct.pack(">III", index, height, width)
        n = 3 * height * width
        stream = hashlib.shake_256(hkdf(self.key, info)).digest((n + 7) // 8)
        return np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:n].reshape(3, height, width)

    def secret_map(self, index: int, height: int, width: int, scramble: bool = False) -> torch.Tensor:
        """The ±1 map k of eq. (5) for face ``index``: ``1×1×height×width`` float32; with
        ``scramble``, ``1×4×height×width``: k, then the scramble signs of the three colour channels."""
        bits = self.map_bits(index, height, width)[None]
        if scramble:
            bits = np.concatenate((bits, self.scramble_bits(index, height, width)))
        k = torch.from_numpy(bits.astype(np.float32) * 2.0 - 1.0)
        return k.view(1, bits.shape[0], height, width)

    def key_for(self, net, index: int, height: int, width: int) -> torch.Tensor | None:
        """The key ``net`` takes for face ``index`` (None for an unkeyed network)."""
        channels = net.key_channels
        if channels == 0:
            return None
        return self.secret_map(index, height, width, scramble=channels > 1)


def derive_master_key(password: str | bytes, salt: bytes, kdf: dict | None = None) -> MasterKey:
    """scrypt(password, salt) -> :class:`MasterKey`."""
    params = check_kdf_params(kdf or DEFAULT_KDF)
    if not isinstance(salt, bytes | bytearray) or len(salt) < 8:
        raise ContainerError("the salt is missing or too short")
    key = hashlib.scrypt(normalize_password(password), salt=bytes(salt), n=params["n"], r=params["r"],
                         p=params["p"], maxmem=MAX_SCRYPT_MEMORY + (1 << 20), dklen=MASTER_BYTES)
    return MasterKey(key)
