"""Request-body helpers: bounded decompression (no Ray)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from serving.http.body import decompress


def test_gzip_and_deflate_round_trip() -> None:
    data = b"tensor bytes " * 100
    assert decompress(gzip.compress(data), "gzip", 10_000) == data
    assert decompress(zlib.compress(data), "deflate", 10_000) == data
    assert decompress(data, None, 10_000) == data


def test_decompression_bomb_is_413_not_memory() -> None:
    bomb = gzip.compress(b"\0" * (50 << 20))
    with pytest.raises(PayloadTooLarge):
        decompress(bomb, "gzip", 1 << 20)


def test_corrupt_and_unknown_encodings() -> None:
    with pytest.raises(InvalidInput):
        decompress(b"not gzip", "gzip", 1000)
    with pytest.raises(UnsupportedMediaType):
        decompress(b"x", "br", 1000)
