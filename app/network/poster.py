"""裂变海报: a PNG with the platform name, the inviter's name, a Chinese call to action and the QR code of the
absolute invite link. Drawn with Pillow in the Noto CJK font; a missing font is an error, never boxes."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import lru_cache

import segno
from flask import current_app, has_app_context
from flask_babel import gettext, lazy_gettext
from PIL import Image, ImageDraw, ImageFont

DEFAULT_FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
FONT_FAMILY = "Noto Sans CJK SC"  # the .ttc holds JP, KR, SC, TC, HK faces: pick Simplified Chinese by name
WIDTH, HEIGHT = 750, 1200
QR_BORDER = 4  # quiet zone, in modules
QR_MAX_SIDE = 480  # px, quiet zone included
CALL_TO_ACTION = lazy_gettext("扫码注册，成为我的下级代理")
RED, WHITE, DARK, GREY, BLACK = (227, 51, 51), (255, 255, 255), (34, 34, 34), (110, 110, 110), (0, 0, 0)


class PosterFontMissing(RuntimeError):
    """The CJK font is not installed: install Debian's fonts-noto-cjk (or set INVITE_POSTER_FONT)."""


@dataclass(frozen=True)
class QrPlacement:
    left: int  # top-left corner of the first module (inside the quiet zone)
    top: int
    scale: int  # pixels per module
    size: int  # modules per side


def font_path() -> str:
    configured = current_app.config.get("INVITE_POSTER_FONT") if has_app_context() else None
    return configured or DEFAULT_FONT


@lru_cache(maxsize=8)
def _face_index(path: str) -> int:
    for index in range(16):
        try:
            face = ImageFont.truetype(path, 12, index=index)
        except OSError:
            break
        if face.getname()[0] == FONT_FAMILY:
            return index
    return 0


def load_font(size: int, path: str | None = None) -> ImageFont.FreeTypeFont:
    path = path or font_path()
    if not os.path.isfile(path):
        raise PosterFontMissing(gettext("海报字体缺失：%(path)s 不存在。请安装 fonts-noto-cjk (apt-get install "
                                        "fonts-noto-cjk) 或设置 INVITE_POSTER_FONT", path=path))
    try:
        return ImageFont.truetype(path, size, index=_face_index(path))
    except OSError as exc:
        raise PosterFontMissing(gettext("海报字体无法加载：%(path)s (%(exc)s)", path=path, exc=exc)) from exc


def qr_placement(link: str) -> QrPlacement:
    qr = segno.make(link, error="m")
    size = qr.symbol_size(border=0)[0]
    scale = max(2, QR_MAX_SIDE // (size + 2 * QR_BORDER))
    side = (size + 2 * QR_BORDER) * scale
    left = (WIDTH - side) // 2 + QR_BORDER * scale
    top = 470 + QR_BORDER * scale
    return QrPlacement(left, top, scale, size)


def qr_matrix(link: str) -> list[list[bool]]:
    """segno's module matrix for the link (True = dark), without the quiet zone."""
    return [[bool(m) for m in row] for row in segno.make(link, error="m").matrix]


def _fit(draw: ImageDraw.ImageDraw, text: str, size: int, max_width: int) -> ImageFont.FreeTypeFont:
    font = load_font(size)
    while size > 14 and draw.textlength(text, font=font) > max_width:
        size -= 2
        font = load_font(size)
    return font


def _centered(draw: ImageDraw.ImageDraw, y: int, text: str, font, fill) -> None:
    width = draw.textlength(text, font=font)
    draw.text(((WIDTH - width) / 2, y), text, font=font, fill=fill)


def render_poster(platform_name: str, agent_name: str, link: str, code: str) -> bytes:
    """The poster as PNG bytes."""
    load_font(20)  # fail before drawing anything
    image = Image.new("RGB", (WIDTH, HEIGHT), WHITE)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, WIDTH, 190), fill=RED)
    _centered(draw, 50, platform_name, _fit(draw, platform_name, 64, WIDTH - 80), WHITE)
    name_line = gettext("%(agent_name)s 邀请你加入", agent_name=agent_name)
    _centered(draw, 240, name_line, _fit(draw, name_line, 44, WIDTH - 80), DARK)
    call = str(CALL_TO_ACTION)  # Pillow draws str, not a lazy string
    _centered(draw, 320, call, _fit(draw, call, 40, WIDTH - 80), RED)
    _centered(draw, 390, gettext("进货享折扣 · 团队共成长"), load_font(28), GREY)

    place = qr_placement(link)
    for r, row in enumerate(qr_matrix(link)):
        for c, dark in enumerate(row):
            if dark:
                x, y = place.left + c * place.scale, place.top + r * place.scale
                draw.rectangle((x, y, x + place.scale - 1, y + place.scale - 1), fill=BLACK)
    bottom = place.top + (place.size + QR_BORDER) * place.scale
    _centered(draw, bottom + 20, gettext("邀请码：%(code)s", code=code), load_font(34), DARK)
    _centered(draw, bottom + 75, gettext("长按识别二维码或在浏览器中打开链接"), load_font(24), GREY)
    _centered(draw, bottom + 112, link, _fit(draw, link, 22, WIDTH - 60), GREY)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


__all__ = ["PosterFontMissing", "QrPlacement", "load_font", "qr_matrix", "qr_placement", "render_poster"]
