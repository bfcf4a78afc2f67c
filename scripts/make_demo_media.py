"""Regenerate the demo media in manifests/media: a presenter portrait and per-language voice clips.

Why: the demos need a face and short spoken clips in several languages, and third-party photos or
recordings would bring licensing questions. So everything is synthetic: the face is drawn with
Pillow, the speech comes from espeak-ng and is encoded to MP3 with imageio-ffmpeg's ffmpeg. Output
is deterministic, so rerunning the script should not change the committed files; only people who
regenerate them need espeak-ng.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import imageio_ffmpeg
from PIL import Image, ImageChops, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
MEDIA_DIR = ROOT / "manifests" / "media"
PORTRAIT_PATH = MEDIA_DIR / "presenter.png"
VOICES_DIR = MEDIA_DIR / "voices"

# Final portrait size; everything is drawn at SCALE times this and downsampled for smooth edges.
WIDTH, HEIGHT = 768, 1024
SCALE = 2

Box = tuple[int, int, int, int]
BoxF = tuple[float, float, float, float]
Color = tuple[int, int, int]
Point = tuple[int, int]

# lang code -> (espeak-ng voice, sentence)
VOICE_LINES: dict[str, tuple[str, str]] = {
    "en": (
        "en-us",
        "Welcome to avatarbatch. This presenter speaks every language in your catalogue.",
    ),
    "es": (
        "es",
        "Bienvenidos a avatarbatch. Este presentador habla todos los idiomas de su catálogo.",
    ),
    "de": (
        "de",
        "Willkommen bei avatarbatch. Dieser Moderator spricht jede Sprache in Ihrem Katalog.",
    ),
    "fr": (
        "fr-fr",
        "Bienvenue dans avatarbatch. Ce présentateur parle toutes les langues de votre catalogue.",
    ),
    "it": (
        "it",
        "Benvenuti in avatarbatch. Questo presentatore parla tutte le lingue del vostro catalogo.",
    ),
    "pt": (
        "pt",
        "Bem-vindos ao avatarbatch. Este apresentador fala todas as línguas do seu catálogo.",
    ),
}

ESPEAK_SPEED_WPM = 150
MP3_SAMPLE_RATE = 22050  # espeak-ng's native rate, so ffmpeg does not resample
MP3_BITRATE = "64k"

# Palette
BG_TOP: Color = (232, 238, 245)
BG_BOTTOM: Color = (150, 170, 192)
BG_GLOW: Color = (250, 251, 253)
SKIN: Color = (234, 192, 160)
SKIN_LIGHT: Color = (246, 212, 184)
SKIN_SHADE: Color = (200, 148, 118)
SKIN_DEEP: Color = (170, 112, 88)
BLUSH: Color = (232, 150, 140)
HAIR: Color = (72, 48, 36)
HAIR_LIGHT: Color = (122, 86, 62)
HAIR_DARK: Color = (52, 34, 26)
EYE_WHITE: Color = (250, 248, 245)
IRIS: Color = (88, 112, 74)
IRIS_DARK: Color = (52, 70, 44)
PUPIL: Color = (24, 20, 18)
LASH: Color = (52, 34, 28)
LIP: Color = (176, 92, 88)
LIP_LIGHT: Color = (208, 128, 118)
SUIT: Color = (40, 56, 86)
SUIT_LIGHT: Color = (64, 84, 120)
SUIT_DARK: Color = (24, 34, 54)
SHIRT: Color = (246, 247, 250)
SHIRT_SHADE: Color = (200, 206, 218)
TIE: Color = (168, 52, 60)
TIE_DARK: Color = (120, 34, 42)
SHADOW: Color = (40, 50, 70)


# --------------------------------------------------------------------------- drawing helpers


class Pen:
    """Draws masks on the supersampled canvas in a local coordinate system.

    Coordinates are given in final-image pixels relative to `origin`, multiplied by `zoom`; the
    pen converts them to canvas pixels (times SCALE). The head is drawn with its own pen so it
    can be placed and sized independently of the body.
    """

    def __init__(
        self, size: tuple[int, int], origin: tuple[float, float] = (0, 0), zoom: float = 1.0
    ) -> None:
        self.size = size
        self.ox, self.oy = origin
        self.zoom = zoom

    def length(self, v: float) -> int:
        return round(v * self.zoom * SCALE)

    def pt(self, x: float, y: float) -> Point:
        return (round((self.ox + x * self.zoom) * SCALE), round((self.oy + y * self.zoom) * SCALE))

    def box(self, b: BoxF) -> Box:
        (x0, y0), (x1, y1) = self.pt(b[0], b[1]), self.pt(b[2], b[3])
        return (x0, y0, x1, y1)

    def blank(self) -> Image.Image:
        return Image.new("L", self.size, 0)

    def ellipse(self, b: BoxF) -> Image.Image:
        mask = self.blank()
        ImageDraw.Draw(mask).ellipse(self.box(b), fill=255)
        return mask

    def polygon(self, points: Sequence[tuple[float, float]]) -> Image.Image:
        mask = self.blank()
        ImageDraw.Draw(mask).polygon([self.pt(x, y) for x, y in points], fill=255)
        return mask

    def rect(self, b: BoxF) -> Image.Image:
        mask = self.blank()
        ImageDraw.Draw(mask).rectangle(self.box(b), fill=255)
        return mask

    def arc(self, b: BoxF, start: float, end: float, width: float) -> Image.Image:
        mask = self.blank()
        ImageDraw.Draw(mask).arc(
            self.box(b), start=start, end=end, fill=255, width=self.length(width)
        )
        return mask

    def line(self, points: Sequence[tuple[float, float]], width: float) -> Image.Image:
        mask = self.blank()
        ImageDraw.Draw(mask).line(
            [self.pt(x, y) for x, y in points], fill=255, width=self.length(width), joint="curve"
        )
        return mask

    def blur(self, mask: Image.Image, radius: float) -> Image.Image:
        return mask.filter(ImageFilter.GaussianBlur(radius * self.zoom * SCALE))

    def shift(self, mask: Image.Image, dx: float, dy: float) -> Image.Image:
        """Translate a mask without wrapping around the edges (unlike ImageChops.offset)."""
        out = self.blank()
        out.paste(mask, (self.length(dx), self.length(dy)))
        return out

    def rounded(self, mask: Image.Image, radius: float) -> Image.Image:
        """Round off sharp corners: blur, then re-threshold with a narrow antialiasing ramp."""
        return self.blur(mask, radius).point(lambda v: min(255, max(0, (v - 126) * 64)))


def opacity(mask: Image.Image, alpha: float) -> Image.Image:
    """Multiply a mask by a constant opacity in [0, 1]."""
    return mask.point(lambda v: round(v * alpha))


def both(a: Image.Image, b: Image.Image) -> Image.Image:
    """Intersection of two masks."""
    return ImageChops.multiply(a, b)


def either(*masks: Image.Image) -> Image.Image:
    """Union of masks."""
    out = masks[0]
    for m in masks[1:]:
        out = ImageChops.lighter(out, m)
    return out


def minus(a: Image.Image, b: Image.Image) -> Image.Image:
    return ImageChops.subtract(a, b)


def paint(canvas: Image.Image, color: Color, mask: Image.Image) -> None:
    canvas.paste(color, (0, 0, *canvas.size), mask)


def vertical_ramp(size: tuple[int, int]) -> Image.Image:
    """Mask going from 0 at the top to 255 at the bottom."""
    return Image.linear_gradient("L").resize(size, Image.Resampling.BICUBIC)


def radial_glow(pen: Pen, b: BoxF) -> Image.Image:
    """Mask that is 255 at the centre of box b and fades smoothly to 0 at its edge."""
    x0, y0, x1, y1 = pen.box(b)
    spot = Image.radial_gradient("L").resize((x1 - x0, y1 - y0), Image.Resampling.BICUBIC)
    spot = ImageChops.invert(spot).point(lambda v: max(0, v * 2 - 255))
    mask = pen.blank()
    mask.paste(spot, (x0, y0))
    return mask


# --------------------------------------------------------------------------- portrait


def torso_mask(pen: Pen, cx: float) -> Image.Image:
    """Shoulders and jacket silhouette, running off the bottom and sides of the frame."""
    outline = [
        (cx - 100, 650),
        (cx + 100, 650),
        (cx + 250, 686),
        (cx + 350, 736),
        (cx + 420, 820),
        (cx + 470, 1100),
        (cx - 470, 1100),
        (cx - 420, 820),
        (cx - 350, 736),
        (cx - 250, 686),
    ]
    return pen.rounded(pen.polygon(outline), 24)


def neck_mask(pen: Pen, cx: float) -> Image.Image:
    return pen.polygon([(cx - 70, 500), (cx + 70, 500), (cx + 76, 740), (cx - 76, 740)])


def draw_body(img: Image.Image, pen: Pen, cx: float) -> Image.Image:
    """Neck, shirt, tie and suit. Returns the neck mask (the head casts a shadow on it)."""
    neck = neck_mask(pen, cx)
    torso = torso_mask(pen, cx)

    # --- suit
    paint(img, SUIT, torso)
    for sign, alpha in ((-1, 0.6), (1, 0.45)):
        highlight = pen.ellipse((cx + sign * 330 - 110, 700, cx + sign * 330 + 110, 860))
        paint(img, SUIT_LIGHT, both(torso, opacity(pen.blur(highlight, 40), alpha)))
    dark_bottom = vertical_ramp(pen.size).point(lambda v: max(0, v - 130) * 2)
    paint(img, SUIT_DARK, both(torso, opacity(dark_bottom, 0.7)))

    # --- shirt opening (V) and collar band
    shirt = either(
        both(pen.polygon([(cx - 100, 652), (cx + 100, 652), (cx, 930)]), torso),
        pen.polygon([(cx - 72, 632), (cx + 72, 632), (cx + 100, 654), (cx - 100, 654)]),
    )
    paint(img, SHIRT, shirt)
    paint(
        img,
        SHIRT_SHADE,
        both(shirt, opacity(pen.blur(pen.ellipse((cx - 84, 640, cx + 84, 730)), 18), 0.8)),
    )

    # --- neck, in front of the back of the collar
    paint(img, SKIN, neck)
    for sign in (-1, 1):
        side = pen.polygon(
            [
                (cx + sign * 34, 500),
                (cx + sign * 90, 500),
                (cx + sign * 90, 740),
                (cx + sign * 40, 740),
            ]
        )
        paint(img, SKIN_SHADE, both(neck, opacity(pen.blur(side, 14), 0.6)))

    # --- collar points (cast a small shadow on shirt and neck)
    for sign in (-1, 1):
        collar = pen.polygon(
            [
                (cx + sign * 76, 628),
                (cx + sign * 2, 724),
                (cx + sign * 44, 780),
                (cx + sign * 112, 670),
            ]
        )
        shadow = pen.shift(pen.blur(collar, 6), 0, 6)
        paint(img, SHIRT_SHADE, both(opacity(shadow, 0.8), either(shirt, neck)))
        paint(img, SHIRT, collar)
        fold = pen.line([(cx + sign * 76, 628), (cx + sign * 112, 670)], 2)
        paint(img, SHIRT_SHADE, opacity(pen.blur(fold, 1), 0.7))

    # --- tie: blade tucked into the V, knot between the collar points
    blade = both(
        pen.polygon([(cx - 15, 756), (cx + 15, 756), (cx + 34, 900), (cx, 944), (cx - 34, 900)]),
        shirt,
    )
    paint(img, TIE, blade)
    right_half = pen.rect((cx + 4, 756, cx + 60, 960))
    paint(img, TIE_DARK, both(blade, opacity(pen.blur(right_half, 8), 0.55)))
    paint(
        img, TIE_DARK, pen.polygon([(cx - 24, 716), (cx + 24, 716), (cx + 17, 762), (cx - 17, 762)])
    )
    paint(img, TIE, pen.polygon([(cx - 20, 718), (cx + 18, 718), (cx + 11, 756), (cx - 13, 756)]))

    # --- lapels: slightly lighter bands along the V, with dark edges
    for sign in (-1, 1):
        lapel = both(
            pen.polygon(
                [
                    (cx + sign * 100, 652),
                    (cx + sign * 176, 684),
                    (cx + sign * 58, 990),
                    (cx + sign * 4, 936),
                ]
            ),
            torso,
        )
        paint(img, SUIT, lapel)
        paint(img, SUIT_LIGHT, both(lapel, opacity(pen.blur(lapel, 14), 0.4)))
        outer = pen.line([(cx + sign * 176, 684), (cx + sign * 58, 990)], 3)
        paint(img, SUIT_DARK, both(pen.blur(outer, 1.5), torso))
        inner = pen.line([(cx + sign * 100, 652), (cx + sign * 4, 936)], 2.5)
        paint(img, SUIT_DARK, opacity(pen.blur(inner, 1), 0.85))
    paint(img, SUIT_DARK, pen.ellipse((cx - 9, 986, cx + 9, 1004)))

    return neck


def draw_head(img: Image.Image, pen: Pen, neck: Image.Image) -> None:
    """Hair, ears, face and features. Coordinates are relative to the face centre."""
    face = pen.ellipse((-128, -170, 128, 170))

    # Shadow of the chin on the neck.
    chin_shadow = pen.shift(pen.blur(pen.ellipse((-112, 30, 112, 176)), 10), 0, 24)
    paint(img, SKIN_DEEP, both(neck, opacity(chin_shadow, 0.55)))

    # --- hair, back part (shows around the top of the head)
    back_hair = both(pen.ellipse((-148, -208, 148, 120)), pen.rect((-200, -260, 200, 22)))
    paint(img, HAIR, back_hair)

    # --- ears
    for sign in (-1, 1):
        ear = pen.ellipse((sign * 127 - 23, -40, sign * 127 + 23, 46))
        inner = pen.ellipse((sign * 127 - 13, -26, sign * 127 + 13, 32))
        paint(img, SKIN, ear)
        paint(img, SKIN_SHADE, both(ear, opacity(pen.blur(inner, 5), 0.8)))

    # --- face with soft shading
    paint(img, SKIN, face)
    core = pen.blur(pen.ellipse((-104, -152, 104, 138)), 26)
    paint(img, SKIN_SHADE, opacity(minus(face, core), 0.7))
    paint(
        img, SKIN_LIGHT, both(face, opacity(pen.blur(pen.ellipse((-70, -132, 40, -42)), 26), 0.7))
    )
    paint(img, SKIN_LIGHT, both(face, opacity(pen.blur(pen.ellipse((-86, 18, -30, 68)), 14), 0.5)))
    for sign in (-1, 1):
        cheek = pen.ellipse((sign * 72 - 32, 38, sign * 72 + 32, 88))
        paint(img, BLUSH, both(face, opacity(pen.blur(cheek, 16), 0.35)))

    # --- hair, front part: head cap minus the exposed forehead, with a side part
    cap = pen.ellipse((-142, -198, 142, 118))
    forehead = either(pen.ellipse((-150, -106, 96, 238)), pen.ellipse((-60, -122, 118, 198)))
    fringe = both(minus(cap, forehead), pen.rect((-200, -260, 200, 8)))
    fringe = pen.rounded(fringe, 5)
    paint(img, SKIN_DEEP, both(face, opacity(pen.shift(pen.blur(fringe, 8), 0, 8), 0.45)))
    paint(img, HAIR, fringe)
    hair = either(fringe, back_hair)
    paint(
        img, HAIR_LIGHT, both(hair, opacity(pen.blur(pen.ellipse((-110, -192, 10, -140)), 14), 0.7))
    )
    part = pen.arc((-60, -192, 240, 18), 200, 250, 3)
    paint(img, HAIR_DARK, both(hair, opacity(pen.blur(part, 2), 0.7)))

    # --- eyebrows
    for sign in (-1, 1):
        bx = sign * 54
        brow = pen.arc((bx - 40, -64, bx + 40, -18), 205, 335, 8)
        paint(img, HAIR, pen.blur(brow, 1.2))

    # --- eyes
    for sign in (-1, 1):
        ex, ey = sign * 54, 0
        white_box = (ex - 27, ey - 14, ex + 27, ey + 14)
        white = pen.ellipse(white_box)
        socket = pen.blur(pen.ellipse((ex - 38, ey - 26, ex + 38, ey + 20)), 8)
        paint(img, SKIN_SHADE, both(face, opacity(socket, 0.35)))
        paint(img, EYE_WHITE, white)
        paint(img, IRIS, both(pen.ellipse((ex - 12.5, ey - 12.5, ex + 12.5, ey + 12.5)), white))
        paint(
            img,
            IRIS_DARK,
            both(pen.arc((ex - 12.5, ey - 12.5, ex + 12.5, ey + 12.5), 0, 360, 2), white),
        )
        paint(img, PUPIL, both(pen.ellipse((ex - 5.5, ey - 5.5, ex + 5.5, ey + 5.5)), white))
        paint(img, (255, 255, 255), pen.ellipse((ex - 7, ey - 8, ex - 1.5, ey - 2.5)))
        # The upper lid casts a faint shadow on the top of the eye.
        paint(img, SKIN_SHADE, opacity(minus(white, pen.shift(white, 0, 5)), 0.5))
        paint(img, LASH, pen.blur(pen.arc(white_box, 185, 355, 3.2), 0.8))
        paint(img, SKIN_DEEP, opacity(pen.blur(pen.arc(white_box, 20, 160, 1.2), 0.8), 0.5))
        crease = pen.arc((ex - 27, ey - 23, ex + 27, ey + 7), 200, 340, 1.5)
        paint(img, SKIN_DEEP, opacity(pen.blur(crease, 1.2), 0.45))

    # --- nose hint
    bridge = pen.line([(12, 8), (16, 64)], 6)
    paint(img, SKIN_SHADE, both(face, opacity(pen.blur(bridge, 6), 0.6)))
    paint(img, SKIN_SHADE, opacity(pen.blur(pen.ellipse((-20, 68, 20, 86)), 5), 0.7))
    paint(img, SKIN_LIGHT, opacity(pen.blur(pen.ellipse((-9, 50, 5, 68)), 3), 0.7))
    for nx in (-11, 11):
        paint(img, SKIN_DEEP, opacity(pen.blur(pen.ellipse((nx - 5, 72, nx + 5, 79)), 1.5), 0.65))

    # --- mouth: closed, gentle smile
    paint(img, LIP_LIGHT, both(face, opacity(pen.blur(pen.ellipse((-26, 112, 26, 132)), 4), 0.55)))
    upper_lip = pen.polygon([(-36, 112), (-12, 103), (0, 106), (12, 103), (36, 112), (0, 116)])
    paint(img, LIP, opacity(pen.blur(upper_lip, 1.5), 0.6))
    paint(img, LIP, pen.blur(pen.arc((-40, 80, 40, 116), 25, 155, 3), 0.8))
    paint(img, SKIN_SHADE, both(face, opacity(pen.blur(pen.ellipse((-24, 144, 24, 158)), 6), 0.4)))


def draw_portrait() -> Image.Image:
    size = (WIDTH * SCALE, HEIGHT * SCALE)
    cx = WIDTH / 2
    body_pen = Pen(size)
    head_pen = Pen(size, origin=(cx, 400), zoom=1.2)

    # Studio backdrop: vertical gradient plus a soft light behind the head.
    img = Image.composite(
        Image.new("RGB", size, BG_BOTTOM), Image.new("RGB", size, BG_TOP), vertical_ramp(size)
    )
    paint(img, BG_GLOW, opacity(radial_glow(body_pen, (cx - 440, 40, cx + 440, 900)), 0.85))

    # Soft drop shadow of the whole figure on the backdrop.
    silhouette = either(
        torso_mask(body_pen, cx), neck_mask(body_pen, cx), head_pen.ellipse((-150, -208, 150, 170))
    )
    paint(img, SHADOW, opacity(body_pen.shift(body_pen.blur(silhouette, 22), 18, 14), 0.28))

    neck = draw_body(img, body_pen, cx)
    draw_head(img, head_pen, neck)
    return img.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)


def write_portrait(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No pnginfo/text chunks: Pillow's PNG writer is then byte-for-byte deterministic.
    draw_portrait().save(path, format="PNG", optimize=True)


# --------------------------------------------------------------------------- voices


def require_tools() -> tuple[str, str]:
    """Return paths to espeak-ng and ffmpeg, or exit with an actionable message."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit(
            "error: espeak-ng not found. It is only needed to regenerate the demo voices; "
            "install it with `apt-get install espeak-ng` (Debian/Ubuntu) and rerun."
        )
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    encoders = subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], check=True, capture_output=True, text=True
    ).stdout
    if "libmp3lame" not in encoders:
        sys.exit(f"error: {ffmpeg} has no libmp3lame encoder; cannot write MP3 files.")
    return espeak, ffmpeg


def write_voice(espeak: str, ffmpeg: str, voice: str, text: str, path: Path, tmp: Path) -> None:
    wav = tmp / f"{path.stem}.wav"
    subprocess.run(
        [espeak, "-v", voice, "-s", str(ESPEAK_SPEED_WPM), "-b", "1", "-w", str(wav), text],
        check=True,
        capture_output=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(wav),
            "-map_metadata",
            "-1",
            "-fflags",
            "+bitexact",
            "-flags:a",
            "+bitexact",
            "-ac",
            "1",
            "-ar",
            str(MP3_SAMPLE_RATE),
            "-c:a",
            "libmp3lame",
            "-b:a",
            MP3_BITRATE,
            "-id3v2_version",
            "0",
            "-write_id3v1",
            "0",
            "-f",
            "mp3",
            str(path),
        ],
        check=True,
        capture_output=True,
    )


def main() -> int:
    espeak, ffmpeg = require_tools()
    write_portrait(PORTRAIT_PATH)
    print(f"wrote {PORTRAIT_PATH.relative_to(ROOT)}")
    with tempfile.TemporaryDirectory(prefix="avatarbatch-voices-") as tmp_dir:
        for lang, (voice, text) in VOICE_LINES.items():
            out = VOICES_DIR / f"{lang}.mp3"
            write_voice(espeak, ffmpeg, voice, text, out, Path(tmp_dir))
            print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
