"""Real photographs and the broken image files real datasets hold.

Photos come from the scikit-image wheel (`skimage/data/`, a `dev` dependency): real camera pictures in
their original formats (PNG, JPEG, an animated GIF). The broken files are generated from them, each
the way it is met in the wild: a JPEG cut short by an interrupted download, a decompression bomb (a
PNG header claiming 400 Mpx over a few bytes of data), a complete 144-Mpx PNG, an animated GIF saved
under a `.jpg` name (OCR-VQA's book covers), and a JPEG whose EXIF Orientation tag says "rotate 90°".
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image

# RGB photographs; sizes in pixels (width, height) as shipped.
PHOTOS = {"astronaut.png": (512, 512), "chelsea.png": (451, 300), "coffee.png": (600, 400),
          "rocket.jpg": (640, 427), "motorcycle_left.png": (741, 500), "hubble_deep_field.jpg": (1000, 872)}
ANIMATED_GIF = "no_time_for_that_tiny.gif"  # 14 x 25 px, 24 frames


def data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def photo(name: str, max_side: int | None = None) -> Image.Image:
    """A photograph as an RGB image, shrunk (aspect kept) so its longer side is at most `max_side`."""
    with Image.open(data_dir() / name) as img:
        img = img.convert("RGB")
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    return img


def encoded(img: Image.Image, fmt: str = "JPEG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}) | save)
    return buf.getvalue()


def jpeg(name: str, max_side: int | None = 256) -> bytes:
    """A photograph as JPEG bytes (what COCO, GQA, TextVQA and VG ship)."""
    return encoded(photo(name, max_side))


def truncated_jpeg(name: str = "coffee.png", keep: float = 0.6) -> bytes:
    """A JPEG cut after `keep` of its bytes: the header is fine, the scan data stops (no EOI marker)."""
    data = jpeg(name)
    return data[: int(len(data) * keep)]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _grey_png(width: int, height: int, rows: int) -> bytes:
    """An 8-bit grey PNG of `width` × `height` whose image data holds `rows` rows of zeros (compressed
    as they are produced: a full 144-Mpx image never sits in memory)."""
    comp = zlib.compressobj(1)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def bomb_png(side: int = 20_000) -> bytes:
    """A decompression bomb: the header says `side` × `side` (400 Mpx), the file is a few hundred bytes."""
    return _grey_png(side, side, rows=1)


def png_144mpx(side: int = 12_000) -> bytes:
    """A complete, valid 12,000 × 12,000 grey PNG (144 Mpx, ~140 KB): above the 89.5-Mpx bomb limit."""
    return _grey_png(side, side, rows=side)


def gif_bytes() -> bytes:
    """The real animated GIF (24 frames); saved under a `.jpg` name it is OCR-VQA's GIF-as-JPEG."""
    return (data_dir() / ANIMATED_GIF).read_bytes()


def gif_first_frame() -> Image.Image:
    with Image.open(data_dir() / ANIMATED_GIF) as img:
        img.seek(0)
        return img.convert("RGB")


def exif_rotated_jpeg(name: str = "rocket.jpg", max_side: int = 240) -> tuple[bytes, Image.Image]:
    """A JPEG stored sideways with EXIF Orientation 6 ("rotate 90° clockwise to display"), and the
    upright image a viewer shows. Stored W × H, it displays H × W."""
    upright = photo(name, max_side)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise: what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(stored, exif=exif.tobytes()), upright
