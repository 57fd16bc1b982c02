"""faceveil.io.container: round trips (property-based), canonical bytes, MAC, and hostile input that
must always end in ContainerError and never in any other exception."""

from __future__ import annotations

import base64
import hashlib
import json
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from faceveil.errors import ContainerError, UsageError
from faceveil.io import container as C
from faceveil.io.container import (
    FaceEntry,
    ImageSize,
    KdfParams,
    ModelRef,
    Record,
    VeilRef,
    canonical_bytes,
    compute_mac,
    embed,
    extract,
    verify_mac,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEX = "0123456789abcdef"
PINNED_SHA256 = "deb1494c73114bb0b106f6d3ef9a0e59b15e445733c1e45732b97e52b9aa5114"


def example_record(**over) -> Record:
    faces = (
        FaceEntry(index=0, box=(100.04, 50.0, 180.26, 150.0), crop=(90, 40, 190, 160), score=0.93,
                  veil=VeilRef(name="blur", params={"sigma": 8.0, "kernel": 21, "region": "ellipse"})),
        FaceEntry(index=1, box=(-3.0, 200.0, 40.0, 250.5), crop=(0, 190, 50, 260), score=None,
                  veil=VeilRef(name="pixelate", params={"block": 9, "region": "square",
                                                        "soft": False})),
    )
    fields = dict(model=ModelRef(name="proface-s-randwr", sha256="ab" * 32),
                  kdf=KdfParams(salt=bytes(range(16))), verifier="cd" * 32,
                  image=ImageSize(width=640, height=480), faces=faces,
                  pixels_sha256="ef" * 32, format_version=1)
    fields.update(over)
    return Record(**fields)


# ------------------------------------------------------------------------------------ strategies

printable = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S"), include_characters=" "),
                    max_size=20)
param_values = st.one_of(
    st.booleans(),
    st.integers(-C.MAX_PARAM_INT, C.MAX_PARAM_INT),
    st.floats(-C.MAX_PARAM_FLOAT, C.MAX_PARAM_FLOAT, allow_nan=False, allow_infinity=False),
    printable,
)
LOWER = "abcdefghijklmnopqrstuvwxyz"
param_keys = st.text(LOWER + "_", min_size=1, max_size=10)
veils = st.builds(VeilRef, name=st.text(LOWER + "0123456789", min_size=1, max_size=10),
                  params=st.dictionaries(param_keys, param_values, max_size=5))


@st.composite
def records(draw) -> Record:
    width = draw(st.integers(2, 5000))
    height = draw(st.integers(2, 5000))
    faces = []
    for i in range(draw(st.integers(0, 4))):
        w = 2 * draw(st.integers(1, width // 2))
        h = 2 * draw(st.integers(1, height // 2))
        x0 = draw(st.integers(0, width - w))
        y0 = draw(st.integers(0, height - h))
        bx = sorted(draw(st.floats(-width, 2 * width, allow_nan=False)) for _ in range(2))
        by = sorted(draw(st.floats(-height, 2 * height, allow_nan=False)) for _ in range(2))
        score = draw(st.one_of(st.none(), st.floats(0, 1)))
        crop_size = draw(st.sampled_from([None, (w, h)]))
        faces.append(FaceEntry(index=i, box=(bx[0], by[0], bx[1], by[1]), crop=(x0, y0, x0 + w, y0 + h),
                               crop_size=crop_size, score=score, veil=draw(veils)))
    n = 2 ** draw(st.integers(1, 16))
    kdf = KdfParams(salt=draw(st.binary(min_size=8, max_size=64)), n=n,
                    r=draw(st.integers(1, 8)), p=draw(st.integers(1, 16)))
    hex64 = st.text(HEX, min_size=64, max_size=64)
    extra = draw(st.dictionaries(st.text(LOWER, min_size=1, max_size=6).map("x_".__add__),
                                 st.recursive(st.none() | st.booleans() | st.integers(-1000, 1000)
                                              | printable,
                                              lambda c: st.lists(c, max_size=3)
                                              | st.dictionaries(printable, c, max_size=3),
                                              max_leaves=6), max_size=2))
    return Record(model=ModelRef(name=draw(st.text(LOWER + "0123456789", min_size=1, max_size=20)),
                                 sha256=draw(hex64)),
                  kdf=kdf, verifier=draw(st.one_of(st.none(), hex64)),
                  mac=draw(st.one_of(st.none(), hex64)),
                  pixels_sha256=draw(st.one_of(st.none(), hex64)),
                  image=ImageSize(width=width, height=height), faces=tuple(faces),
                  software=draw(st.sampled_from(["faceveil 0.1.0", "faceveil 9.9 (ünïcode)"])),
                  extra=extra, format_version=draw(st.sampled_from(C.SUPPORTED_VERSIONS)))


# ------------------------------------------------------------------------------------ round trips


@FAST
@given(records())
def test_round_trip(record):
    text = record.to_json()
    back = Record.from_json(text)
    assert back == record
    assert back.to_json() == text  # canonical: parse + re-serialise is the identity
    assert Record.from_json(text.encode("utf-8")) == record
    assert canonical_bytes(record, exclude_mac=False) == text.encode("ascii")
    assert extract(embed({"Comment": "x"}, record)) == record


def test_example_json_shape():
    d = json.loads(example_record().to_json())
    assert d["format"] == "faceveil" and d["format_version"] == 1 and C.FORMAT_VERSION == 3
    assert d["image"] == {"width": 640, "height": 480}
    assert d["kdf"] == {"name": "scrypt", "n": 65536, "r": 8, "p": 1,
                        "salt": base64.b64encode(bytes(range(16))).decode()}
    f0 = d["faces"][0]
    assert f0["box"] == [100.0, 50.0, 180.3, 150.0]  # rounded to 0.1 px
    assert f0["crop"] == [90, 40, 190, 160] and f0["crop_size"] == [100, 120]
    assert f0["veil"] == {"name": "blur", "params": {"kernel": 21, "region": "ellipse", "sigma": 8.0}}
    assert "score" not in d["faces"][1] and "mac" not in d and d["pixels_sha256"] == "ef" * 32
    assert d["software"].startswith("faceveil ")


def test_canonical_bytes_stable():
    r = example_record()
    a = canonical_bytes(r)
    assert a == canonical_bytes(Record.from_json(r.to_json()))
    # key order and whitespace of the input do not matter
    shuffled = json.dumps(dict(reversed(list(json.loads(r.to_json()).items()))), indent=2)
    assert canonical_bytes(Record.from_json(shuffled)) == a
    assert a.isascii() and b" " not in a.replace(b"faceveil 0", b"")
    assert b'"mac"' not in canonical_bytes(r.with_mac(b"k" * 32))
    # pinned: a change here changes every MAC ever written; bump format_version if it must change
    pinned = canonical_bytes(example_record(software="faceveil test"))
    assert hashlib.sha256(pinned).hexdigest() == PINNED_SHA256


@pytest.mark.parametrize("version", [2, 3])
def test_versions_2_and_3_round_trip_and_are_covered_by_the_mac(version):
    key = b"m" * 32
    r2 = example_record(format_version=version).with_mac(key)
    back = Record.from_json(r2.to_json())
    assert back.format_version == version and json.loads(r2.to_json())["format_version"] == version
    assert compute_mac(back, key) == back.mac
    # a scrambling record relabelled as an older version (to dodge the scramble) no longer verifies
    for older in range(1, version):
        relabelled = json.loads(r2.to_json())
        relabelled["format_version"] = older
        down = Record.from_json(json.dumps(relabelled))
        assert compute_mac(down, key) != down.mac
    assert Record.__dataclass_fields__["format_version"].default == C.FORMAT_VERSION
    for bad in (0, 4, True, "2"):
        with pytest.raises(ContainerError, match="format_version"):
            example_record(format_version=bad)


def test_mac():
    key = b"m" * 32
    r = example_record().with_mac(key)
    back = Record.from_json(r.to_json())
    assert verify_mac(back, key) and not verify_mac(back, b"n" * 32)
    assert not verify_mac(example_record(), key)
    tampered = json.loads(r.to_json())
    tampered["faces"][0]["crop"] = [92, 40, 192, 160]
    assert not verify_mac(Record.from_json(json.dumps(tampered)), key)
    with_extra = json.loads(r.to_json())
    with_extra["x_new"] = 1  # an unknown field added later breaks the MAC: it is covered
    assert not verify_mac(Record.from_json(json.dumps(with_extra)), key)
    assert compute_mac(r, key) == r.mac
    with pytest.raises(UsageError):
        compute_mac(r, b"short")


def test_extract_absent_and_embed_does_not_mutate():
    assert extract({}) is None and extract(None) is None and extract({"Comment": "x"}) is None
    text = {"Comment": "x"}
    out = embed(text, example_record())
    assert text == {"Comment": "x"} and set(out) == {"Comment", C.TEXT_KEY}
    with pytest.raises(ContainerError):
        extract({C.TEXT_KEY: "not json"})


def test_unknown_top_level_fields_kept():
    d = json.loads(example_record().to_json())
    d["x_created"] = {"when": "2024", "tags": [1, 2]}
    r = Record.from_json(json.dumps(d))
    assert json.loads(r.to_json())["x_created"] == {"when": "2024", "tags": [1, 2]}


def test_unkeyed_model_has_no_verifier():
    r = example_record(verifier=None)
    d = json.loads(r.to_json())
    assert "verifier" not in d
    assert Record.from_json(r.to_json()) == r and r.width == 640 and r.height == 480


def test_check_image_size():
    r = example_record()
    r.check_image_size(640, 480)
    with pytest.raises(ContainerError, match="resized or cropped"):
        r.check_image_size(480, 640)


def test_scrypt_bounds_match_keys():
    keys = pytest.importorskip("faceveil.keys")
    assert C.MAX_SCRYPT_MEMORY == keys.MAX_SCRYPT_MEMORY and C.MAX_SCRYPT_P == keys.MAX_SCRYPT_P
    kdf = KdfParams(salt=keys.new_salt(), **keys.DEFAULT_KDF)
    assert keys.check_kdf_params(kdf.as_dict()) == kdf.as_dict()


# ------------------------------------------------------------------------------------ hostile input


def parse_must_fail(text, match: str | None = None) -> ContainerError:
    with pytest.raises(ContainerError, match=match) as info:
        Record.from_json(text)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400
    return info.value


def mutated(path, value):
    d = json.loads(example_record().to_json())
    node = d
    for k in path[:-1]:
        node = node[k]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(d, allow_nan=True)


@pytest.mark.parametrize("version", [0, 4, 99, -1, 10 ** 30])
def test_unknown_version_names_supported(version):
    parse_must_fail(mutated(["format_version"], version), match="reads version 1, 2, 3")


@pytest.mark.parametrize("path,value,match", [
    (["format"], "other", "not a faceveil record"),
    (["format_version"], True, "format_version"),
    (["format_version"], 1.0, "format_version"),
    (["format_version"], "1", "format_version"),
    (["model"], KeyError, "model is missing"),
    (["model", "sha256"], "AB" * 32, "sha256"),
    (["model", "sha256"], "ab" * 31, "sha256"),
    (["model", "name"], "../../etc/passwd", "model.name"),
    (["model", "extra"], 1, "unknown field"),
    (["kdf", "name"], "pbkdf2", "scrypt"),
    (["kdf", "n"], 1000, "power of two"),
    (["kdf", "n"], 2 ** 30, "MiB"),
    (["kdf", "p"], 0, "kdf.p"),
    (["kdf", "r"], 8.0, "kdf.r"),
    (["kdf", "salt"], "not base64!", "base64"),
    (["kdf", "salt"], "AAAA", "salt must be 8 to 64 bytes"),
    (["kdf", "salt"], "AAECAwQFBgcICQoLDA0ODw", "base64"),  # unpadded
    (["kdf", "salt"], 12, "salt must be a string"),
    (["verifier"], "zz" * 32, "verifier"),
    (["verifier"], None, "verifier"),
    (["pixels_sha256"], "ab", "pixels_sha256"),
    (["pixels_sha256"], None, "pixels_sha256"),
    (["mac"], None, "mac"),
    (["mac"], "00", "mac"),
    (["image"], [640, 480], "image must be an object"),
    (["image", "width"], -640, "width"),
    (["image", "width"], 0, "width"),
    (["image", "width"], 10 ** 12, "width"),
    (["image", "height"], 100, "outside"),
    (["faces"], {}, "faces must be a list"),
    (["faces", 0, "index"], 1, "numbered"),
    (["faces", 0, "crop"], [90, 40, 191, 160], "odd size"),
    (["faces", 0, "crop"], [90, 40, 90, 160], "empty"),
    (["faces", 0, "crop"], [-2, 40, 98, 160], "crop"),
    (["faces", 0, "crop"], [600, 40, 700, 160], "outside"),
    (["faces", 0, "crop"], [90, 40, 190], "4 elements"),
    (["faces", 0, "crop"], [90.0, 40, 190, 160], "integer"),
    (["faces", 0, "crop_size"], [120, 100], "does not match"),
    (["faces", 0, "box"], [1, 2, 0, 3], "x0 > x1"),
    (["faces", 0, "box"], "1,2,3,4", "box"),
    (["faces", 0, "box"], [1e300, 0, 1e301, 1], "out of range"),
    (["faces", 0, "score"], 1.5, "score"),
    (["faces", 0, "score"], "high", "score"),
    (["faces", 0, "veil", "params"], {"k": [1, 2]}, "flat"),
    (["faces", 0, "veil", "params"], {"k": {"a": 1}}, "flat"),
    (["faces", 0, "veil", "params"], {"k": None}, "flat"),
    (["faces", 0, "veil", "params"], {"bad key": 1}, "identifier"),
    (["faces", 0, "veil", "params"], {f"k{i}": i for i in range(40)}, "more than"),
    (["faces", 0, "veil", "params"], {"k": 2 ** 60}, "out of range"),
    (["faces", 0, "veil", "params"], {"k": "x" * 1000}, "longer"),
    (["faces", 0, "veil", "name"], "", "veil.name"),
    (["faces", 0, "veil"], "blur", "veil must be an object"),
    (["faces", 0, "colour"], "red", "unknown field"),
    (["software"], 3, "software"),
    (["software"], "evil\x1b[2J", "control"),
    (["format_version"], KeyError, "format_version"),
])
def test_hostile_fields(path, value, match):
    parse_must_fail(mutated(path, value), match=match)


def test_hostile_documents():
    good = example_record().to_json()
    for text in ["", "null", "[]", "1", '"faceveil"', "{", good + "x", good.replace("}", "", 1),
                 '{"format":"faceveil","format_version":1}', b"\xff\xfe{}", "{}" * 3,
                 "[" * 200_000 + "]" * 200_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
                 good.replace('"verifier"', '"verifier":"' + "ab" * 32 + '","verifier"'),
                 good.replace("0.93", "NaN"), good.replace("0.93", "Infinity"),
                 good.replace("0.93", "1e999"), good.replace("640", "9" * 5000),
                 good.replace('"ellipse"', '"\\ud800"'), " " * (C.MAX_RECORD_BYTES + 1),
                 json.dumps({**json.loads(good), "x_pad": "a" * C.MAX_RECORD_BYTES})]:
        parse_must_fail(text)
    d = json.loads(good)
    d["faces"] = [d["faces"][0]] * (C.MAX_FACES + 1)
    parse_must_fail(json.dumps(d), match="limit")
    d = json.loads(good)
    d["x_deep"] = json.loads("[" * 30 + "]" * 30)
    parse_must_fail(json.dumps(d), match="nested")
    for bad in (None, 12, ["x"]):
        parse_must_fail(bad)


def test_every_truncation_fails_cleanly():
    good = example_record().with_mac(b"k" * 32).to_json()
    for cut in range(len(good)):
        parse_must_fail(good[:cut])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12)


def _assert_only_container_errors(text):
    try:
        Record.from_json(text)
    except ContainerError:
        pass


@FAST
@given(json_values)
def test_random_json_never_crashes(value):
    _assert_only_container_errors(json.dumps(value))
    _assert_only_container_errors(json.dumps({"format": "faceveil", "format_version": 1, "x": value}))


@FAST
@given(st.data())
def test_random_field_replacement(data):
    """Replace one random field anywhere in a valid record by random JSON: the result is either a
    valid record or a ContainerError, never another exception."""
    d = json.loads(example_record().to_json())
    node, key = d, None
    while True:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        assume(keys)
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if not isinstance(child, (dict, list)) or not child or data.draw(st.booleans()):
            break
        node = child
    node[key] = data.draw(json_values)
    _assert_only_container_errors(json.dumps(d))


@FAST
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_random_bytes_and_text(blob):
    _assert_only_container_errors(blob)


# ------------------------------------------------------------------------------------ construction


def test_construction_validates_too():
    with pytest.raises(ContainerError, match="numbered"):
        example_record(faces=(example_record().faces[1],))
    with pytest.raises(ContainerError, match="outside"):
        example_record(image=ImageSize(width=100, height=480))
    with pytest.raises(ContainerError, match="odd"):
        FaceEntry(index=0, box=(0, 0, 1, 1), crop=(0, 0, 3, 4), veil=VeilRef(name="blur"))
    with pytest.raises(ContainerError, match="does not match"):
        FaceEntry(index=0, box=(0, 0, 1, 1), crop=(0, 0, 4, 6), crop_size=(6, 4), veil=VeilRef(name="b"))
    with pytest.raises(ContainerError, match="width"):
        ImageSize(width=0, height=5)
    with pytest.raises(UsageError, match="bytes"):
        example_record().with_mac("ab" * 32)  # a tag is not a key
    with pytest.raises(ContainerError, match="salt"):
        KdfParams(salt=b"short")
    with pytest.raises(ContainerError, match="clashes"):
        example_record(extra={"faces": 1})
    with pytest.raises(ContainerError):
        example_record(faces=("not a face",))
    # the writer refuses what the reader would refuse: the size cap
    many = tuple(FaceEntry(index=i, box=(0, 0, 2, 2), crop=(0, 0, 2, 2),
                           veil=VeilRef(name="v", params={f"p{j}": "x" * 200 for j in range(10)}))
                 for i in range(600))
    with pytest.raises(ContainerError, match="limit"):
        example_record(faces=many).to_json()


def test_params_are_read_only_and_normalised():
    v = VeilRef(name="blur", params={"z": 1, "a": 2.5})
    assert list(v.params) == ["a", "z"]
    with pytest.raises(TypeError):
        v.params["a"] = 3  # type: ignore[index]
    f = FaceEntry(index=0, box=[1.26, 2, 3, 4], crop=[0, 0, 2, 2], score=0.123456, veil=v)
    assert f.box == (1.3, 2.0, 3.0, 4.0) and f.crop == (0, 0, 2, 2) and f.score == 0.1235
    assert isinstance(f.box[1], float) and math.isclose(f.crop_size[0], 2)
