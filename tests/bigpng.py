"""Valid PNG files of huge pixel sizes, written cheaply (no tests here).

A 20000×20000 1-bit image is 50 MB of pixels but ~48 KB on disk; Pillow's
`Image.new` + `save` would spend a second and 50 MB of memory on it, so the
file is written chunk by chunk: an IHDR, one IDAT of all-black rows, an IEND.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def write_png(path: Path, width: int, height: int) -> Path:
    """A valid black 1-bit greyscale PNG of `width`×`height` pixels at `path`."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grey
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "none", then the pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )
    return path
