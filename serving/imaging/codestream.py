"""The image size a compressed frame declares in its own codestream, read before decoding.

A decoder allocates what the codestream says, not what the DICOM header says: a 1 KB JPEG 2000
frame whose SIZ marker claims 16384 x 16384 costs gigabytes before it fails. The header's Rows
and Columns are checked against the pixel limit first; this reads the codestream's own
dimensions so a frame that disagrees with its header is refused before any decoder runs.
"""

from __future__ import annotations

import struct

from pydicom.encaps import generate_frames
from pydicom.uid import UID

_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "
# JPEG start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC) and JPEG-LS's SOF55.
_JPEG_SOF = {bytes([0xFF, m]) for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}
_JPEG_SOF.add(b"\xff\xf7")


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG 2000 codestream's SIZ segment (ISO/IEC 15444-1 A.5.1)."""
    offset = 0
    if frame.startswith(_JP2_SIGNATURE):  # a JP2 file: find its codestream box
        offset = 12
        while offset + 8 <= len(frame):
            length = int.from_bytes(frame[offset:offset + 4], "big")
            if frame[offset + 4:offset + 8] == b"jp2c":
                offset += 8
                break
            if length < 8:
                return None
            offset += length
    if frame[offset:offset + 4] != _J2K_SOC_SIZ or len(frame) < offset + 24:
        return None
    # Lsiz, Rsiz, then Xsiz, Ysiz (grid size) and XOsiz, YOsiz (image offset on the grid)
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", frame[offset + 8:offset + 24])
    return ysiz - yosiz, xsiz - xosiz


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG or JPEG-LS frame header (ISO/IEC 10918-1 B.2.2)."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 9 <= len(frame):
        marker = frame[offset:offset + 2]
        if marker[0] != 0xFF:
            return None
        if marker in _JPEG_SOF:
            rows, cols = struct.unpack(">HH", frame[offset + 5:offset + 9])
            return rows, cols
        offset += 2 + int.from_bytes(frame[offset + 2:offset + 4], "big")
    return None


def declared_size(pixel_data: bytes, transfer_syntax: UID) -> tuple[int, int] | None:
    """The first frame's (rows, columns) as its codestream declares them; None when the
    transfer syntax carries no such header (native, RLE) or the codestream cannot be read
    (the decoder then says it is corrupt)."""
    if not transfer_syntax.is_encapsulated:
        return None
    name = transfer_syntax.name
    reader = _j2k_size if "2000" in name else _jpeg_size if "JPEG" in name else None
    if reader is None:
        return None
    try:
        frame = next(generate_frames(pixel_data, number_of_frames=1))
    except Exception:
        return None
    return reader(frame)
