"""Key derivation: standard vectors, our own frozen vectors, and the avalanche property."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceveil.errors import ContainerError, UsageError
from faceveil.keys import DEFAULT_KDF, derive_master_key, hkdf, new_salt

CHEAP = {"name": "scrypt", "n": 1024, "r": 8, "p": 1}  # fast, for tests that are not about cost


def test_hkdf_rfc5869_case_1():
    okm = hkdf(bytes([0x0B] * 22), bytes(range(0xF0, 0xFA)), 42, bytes(range(13)))
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_scrypt_rfc7914_vector():
    # RFC 7914 §12, N=16384 r=8 p=1: the master key is the first 32 bytes of the 64-byte output
    m = derive_master_key("pleaseletmein", b"SodiumChloride", {"name": "scrypt", "n": 16384, "r": 8, "p": 1})
    assert m.key.hex() == "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2"


def test_frozen_faceveil_vectors():
    """These pin the derivation: changing them breaks every file ever written (bump the format)."""
    m = derive_master_key("correct horse battery staple", bytes(range(16)), CHEAP)
    assert m.key.hex() == "9a9f74cc441de571a18c4bf8580ad51f86745d14b39065ad24ad92fc05c99515"
    assert m.verifier == "0be8e5d2f6c545a9166cefcdd5343f5fdc98f01ab845cc96ef24e9e3f6633ad5"
    bits = "".join(map(str, m.map_bits(0, 8, 8).ravel()))
    assert bits == "0101101000110011111000011001000011011011000111101111001001100100"


def test_default_kdf_is_memory_hard():
    assert DEFAULT_KDF["name"] == "scrypt"
    assert 128 * DEFAULT_KDF["n"] * DEFAULT_KDF["r"] >= 64 * 2 ** 20  # 64 MiB per guess


def _flip_bit(s: bytes, bit: int) -> bytes:
    b = bytearray(s)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@pytest.mark.parametrize("bit", [0, 7, 40])
def test_one_bit_password_change_flips_half_the_map(bit):
    salt = bytes(16)
    a = derive_master_key(b"hunter2-hunter2", salt, CHEAP).map_bits(0, 256, 256)
    b = derive_master_key(_flip_bit(b"hunter2-hunter2", bit), salt, CHEAP).map_bits(0, 256, 256)
    frac = float((a != b).mean())
    assert abs(frac - 0.5) < 0.01, frac  # 65,536 bits: 0.01 is ±5 standard deviations


def test_salt_face_index_and_size_each_give_a_new_map():
    m1 = derive_master_key("pw", bytes(16), CHEAP)
    m2 = derive_master_key("pw", _flip_bit(bytes(16), 3), CHEAP)
    base = m1.map_bits(0, 128, 128)
    for other in (m2.map_bits(0, 128, 128), m1.map_bits(1, 128, 128), m1.map_bits(0, 128, 130)[:, :128]):
        assert abs(float((base != other).mean()) - 0.5) < 0.02


def test_map_is_balanced_and_deterministic():
    m = derive_master_key("pw", bytes(16), CHEAP)
    k = m.secret_map(3, 64, 96)
    assert k.shape == (1, 1, 64, 96)
    assert set(np.unique(k.numpy()).tolist()) == {-1.0, 1.0}
    assert abs(float(k.mean())) < 0.05
    assert (m.secret_map(3, 64, 96) == k).all()


def test_verifier_tells_passwords_apart_without_revealing_the_key():
    salt = new_salt()
    right = derive_master_key("right", salt, CHEAP)
    wrong = derive_master_key("wrong", salt, CHEAP)
    assert right.matches(right.verifier)
    assert not wrong.matches(right.verifier)
    assert right.key.hex() not in right.verifier
    assert "secret" in repr(right) and right.key.hex() not in repr(right)


def test_unicode_passwords_are_normalised():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    a = derive_master_key(composed, bytes(16), CHEAP)
    b = derive_master_key(decomposed, bytes(16), CHEAP)
    assert a.key == b.key


@pytest.mark.parametrize("kdf", [
    {"name": "pbkdf2", "n": 1024, "r": 8, "p": 1},
    {"name": "scrypt", "n": 1000, "r": 8, "p": 1},  # not a power of two
    {"name": "scrypt", "n": 2 ** 24, "r": 8, "p": 1},  # 16 GiB: a memory bomb
    {"name": "scrypt", "n": 1024, "r": 8, "p": 1000},
    {"name": "scrypt", "n": "x", "r": 8, "p": 1},
])
def test_hostile_kdf_parameters_are_refused(kdf):
    with pytest.raises(ContainerError):
        derive_master_key("pw", bytes(16), kdf)


def test_empty_password_and_short_salt_are_refused():
    with pytest.raises(UsageError):
        derive_master_key("", bytes(16), CHEAP)
    with pytest.raises(ContainerError):
        derive_master_key("pw", b"abc", CHEAP)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 50), st.integers(1, 40), st.integers(1, 40))
def test_map_shape_property(index, h, w):
    m = derive_master_key("pw", bytes(16), CHEAP)
    bits = m.map_bits(index, h, w)
    assert bits.shape == (h, w) and bits.dtype == np.uint8 and set(np.unique(bits)) <= {0, 1}
