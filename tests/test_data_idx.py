"""IDX reader/writer: round trips and every way a file can be broken."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from scratchvae.atomic import atomic_write
from scratchvae.data.idx import IDXError, read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _sample(dtype, shape):
    rng = np.random.default_rng(1)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 3, 2)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["raw", "gz"])
def test_round_trip(tmp_path, dtype, shape, suffix):
    a = _sample(dtype, shape)
    p = tmp_path / f"a-idx{suffix}"
    write_idx(p, a)
    b = read_idx(p)
    assert b.dtype == np.dtype(dtype)
    assert b.dtype.isnative
    assert b.shape == shape
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable and b.flags.c_contiguous
    # compressed iff named .gz
    assert (p.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    # no temporary files left behind
    assert sorted(os.listdir(tmp_path)) == [p.name]


def test_header_layout_is_big_endian(tmp_path):
    p = tmp_path / "x.idx"
    write_idx(p, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int16))
    raw = p.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:14] == (1).to_bytes(2, "big")
    assert len(raw) == 12 + 6 * 2


def test_gzip_detected_by_magic_not_name(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    gz = tmp_path / "a.gz"
    write_idx(gz, a)
    renamed = tmp_path / "plain-name"
    renamed.write_bytes(gz.read_bytes())
    np.testing.assert_array_equal(read_idx(renamed), a)
    # and a raw file named .gz is read as raw
    raw = tmp_path / "raw"
    write_idx(raw, a)
    misnamed = tmp_path / "misnamed.gz"
    misnamed.write_bytes(raw.read_bytes())
    np.testing.assert_array_equal(read_idx(misnamed), a)


def test_write_rejects_unsupported(tmp_path):
    with pytest.raises(TypeError, match="IDX type code"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="dimensions"):
        write_idx(tmp_path / "a", np.array(3, dtype=np.uint8))
    assert os.listdir(tmp_path) == []


def test_write_is_atomic_on_failure(tmp_path):
    p = tmp_path / "keep.idx"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.idx"]


# --- broken files ----------------------------------------------------------


def _raw_idx(tmp_path, array=None):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) if array is None else array
    p = tmp_path / "good-idx3"
    write_idx(p, array)
    return p.read_bytes()


def _check_error(path, *needles, **kw):
    with pytest.raises(IDXError) as info:
        read_idx(path, **kw)
    msg = str(info.value)
    assert str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    assert "download" in msg  # says what to do
    assert isinstance(info.value, ValueError)
    return msg


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_truncated(tmp_path, gz):
    data = _raw_idx(tmp_path)[:-5]
    p = tmp_path / ("cut.gz" if gz else "cut")
    p.write_bytes(gzip.compress(data) if gz else data)
    _check_error(p, "truncated")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_trailing_bytes(tmp_path, gz):
    data = _raw_idx(tmp_path) + b"\x00\x01"
    p = tmp_path / ("long.gz" if gz else "long")
    p.write_bytes(gzip.compress(data) if gz else data)
    _check_error(p, "trailing")


def test_truncated_inside_header(tmp_path):
    p = tmp_path / "hdr"
    p.write_bytes(_raw_idx(tmp_path)[:9])  # magic + 1.25 sizes
    _check_error(p, "truncated")
    p.write_bytes(b"\x00\x00")
    _check_error(p, "truncated")


def test_bad_magic(tmp_path):
    data = bytearray(_raw_idx(tmp_path))
    data[0] = 0x42
    p = tmp_path / "bad"
    p.write_bytes(bytes(data))
    _check_error(p, "magic")


def test_html_page_instead_of_data(tmp_path):
    p = tmp_path / "page.gz"
    p.write_bytes(b"<!DOCTYPE html><html>Not found</html>")
    _check_error(p, "magic", "HTML")


def test_unknown_type_code(tmp_path):
    data = bytearray(_raw_idx(tmp_path))
    data[2] = 0x0A
    p = tmp_path / "type"
    p.write_bytes(bytes(data))
    _check_error(p, "type code 0x0A")


def test_zero_dimensions(tmp_path):
    p = tmp_path / "zero"
    p.write_bytes(bytes([0, 0, 0x08, 0]))
    _check_error(p, "0 dimensions")


def test_wrong_dimension_count_in_header(tmp_path):
    # header claims 4 dimensions: the data no longer add up
    data = bytearray(_raw_idx(tmp_path))
    data[3] = 4
    p = tmp_path / "dims"
    p.write_bytes(bytes(data))
    with pytest.raises(IDXError, match=str(p).replace("\\", "\\\\")):
        read_idx(p)


def test_unexpected_dimension_count(tmp_path):
    p = tmp_path / "labels-idx1"
    write_idx(p, np.arange(5, dtype=np.uint8))
    _check_error(p, "expected a 3-dimensional", "1 dimensions", expect_ndim=3)
    assert read_idx(p, expect_ndim=1).shape == (5,)


def test_corrupt_gzip_stream(tmp_path):
    good = gzip.compress(_raw_idx(tmp_path, np.arange(4000, dtype=np.int32)))
    # flip bytes in the middle of the deflate data
    bad = bytearray(good)
    mid = len(bad) // 2
    bad[mid:mid + 8] = bytes(b ^ 0xFF for b in bad[mid:mid + 8])
    p = tmp_path / "corrupt.gz"
    p.write_bytes(bytes(bad))
    _check_error(p, "gzip")


def test_gzip_stream_cut_short(tmp_path):
    good = gzip.compress(_raw_idx(tmp_path, np.arange(4000, dtype=np.int32)))
    p = tmp_path / "short.gz"
    p.write_bytes(good[: len(good) - 6])  # CRC/length trailer missing
    _check_error(p, "gzip")


def test_bad_crc(tmp_path):
    good = bytearray(gzip.compress(_raw_idx(tmp_path)))
    good[-8] ^= 0xFF  # CRC32 of the trailer
    p = tmp_path / "crc.gz"
    p.write_bytes(bytes(good))
    _check_error(p, "gzip")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")
