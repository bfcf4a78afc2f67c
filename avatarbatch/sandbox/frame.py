"""The single background frame of a sandbox render: the portrait, a band for the waveform and
a "SANDBOX" mark, prepared with Pillow and handed to ffmpeg as raw RGB.

Pillow keeps every image it can read usable, applies EXIF rotation and needs no
drawtext/freetype in ffmpeg.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from PIL import Image, ImageDraw, ImageFont, ImageOps

from avatarbatch.sandbox.ffmpeg import RenderError

# The waveform band's share of the frame height; the mark's text height per frame short side.
BAND_FRACTION = 0.2
MARK_FRACTION = 0.045


def write_frame(portrait: Path, max_side: int, out: IO[bytes]) -> tuple[int, int]:
    """Write the background frame to `out` as raw RGB (ffmpeg's rawvideo); return its size."""
    frame = _background_frame(portrait, max_side)
    out.write(frame.tobytes())
    out.flush()
    out.seek(0)
    return frame.size


def _background_frame(portrait: Path, max_side: int) -> Image.Image:
    """The portrait fitted into max_side with even dimensions, a darker band and the mark."""
    try:
        with Image.open(portrait) as original:
            # thumbnail() never upscales and lets JPEG decode at reduced size; the box is
            # square, so it bounds the long side whether or not EXIF later rotates the image.
            original.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            image = ImageOps.exif_transpose(original).convert("RGBA")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RenderError(f"portrait {portrait} is not a readable image: {exc}") from exc

    width, height = image.size
    even = (max(2, width - width % 2), max(2, height - height % 2))
    if even != image.size:
        # Dropping one edge column/row keeps the pixels sharp; only a 1 px side needs resizing.
        fits = even[0] <= width and even[1] <= height
        image = image.crop((0, 0, *even)) if fits else image.resize(even)
    width, height = even

    # Transparent portraits would otherwise turn black where they are see-through.
    canvas = Image.new("RGBA", even, (128, 128, 128, 255))
    canvas.alpha_composite(image)
    overlay = Image.new("RGBA", even, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle((0, height - band_height(height), width, height), fill=(0, 0, 0, 96))
    _draw_mark(draw, width, height)
    canvas.alpha_composite(overlay)
    return canvas.convert("RGB")


def band_height(height: int) -> int:
    return max(2, round(height * BAND_FRACTION))


def _draw_mark(draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """White "SANDBOX" on a dark pill in the top-right corner, sized to the frame."""
    size = max(8, round(min(width, height) * MARK_FRACTION))
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    try:
        font = ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: fixed bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), "SANDBOX", font=font)
    pad, margin = max(2, size // 3), max(2, size // 2)
    box_right, box_top = width - margin, margin
    box_left = box_right - (right - left) - 2 * pad
    box_bottom = box_top + (bottom - top) + 2 * pad
    draw.rounded_rectangle(
        (box_left, box_top, box_right, box_bottom), radius=pad, fill=(0, 0, 0, 150)
    )
    draw.text((box_left + pad - left, box_top + pad - top), "SANDBOX", font=font, fill="white")
