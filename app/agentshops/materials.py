"""Promotion materials of an agent shop (直播 / 朋友圈素材): a poster per product (the product, the shop's price, the
QR code of its share link, the shop's name) and a 1080 × 1920 price list of the shop's featured products, plus copy
text to paste. Drawn with Pillow in the Noto CJK font and QR codes by segno, as the referral posters
(app/network/poster.py, whose font loading is reused: a missing font is an error, never boxes).

Generated on demand and cached in agent_shop_material under the SHA-256 of everything drawn (texts, prices,
links, theme, logo version and the layout's version): a changed price or name makes a new fingerprint, so a stale
image is never served, and the older image of the same poster is dropped when the new one is stored.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import segno
from flask_babel import get_locale
from flask_babel import gettext as _
from PIL import Image, ImageDraw, ImageFont
from sqlalchemy import delete, select

from app.agentshops.models import AgentShop, AgentShopMaterial
from app.clock import to_local, utcnow
from app.extensions import db
from app.money import format_fen
from app.network.poster import load_font

LAYOUT_VERSION = 1  # bump when the drawing changes: every cached image is drawn again
POSTER_SIZE = (750, 1200)
PRICE_LIST_SIZE = (1080, 1920)
PRICE_LIST_ROWS = 12
WHITE, DARK, GREY, BLACK = (255, 255, 255), (34, 34, 34), (110, 110, 110), (0, 0, 0)
# Each theme's colours: (band, band text, accent (prices), page background, row stripe)
PALETTES = {
    "general": ((227, 51, 51), WHITE, (227, 51, 51), WHITE, (250, 242, 242)),
    "game": ((24, 20, 52), (0, 229, 255), (255, 64, 160), (16, 14, 36), (32, 28, 66)),
    "campus": ((46, 139, 87), WHITE, (255, 122, 48), (247, 252, 248), (232, 246, 238)),
}


def _palette(theme: str):
    return PALETTES.get(theme, PALETTES["general"])


def _text_colour(theme: str) -> tuple[int, int, int]:
    return (235, 235, 245) if theme == "game" else DARK


def _fit(draw: ImageDraw.ImageDraw, text: str, size: int, max_width: int) -> ImageFont.FreeTypeFont:
    font = load_font(size)
    while size > 14 and draw.textlength(text, font=font) > max_width:
        size -= 2
        font = load_font(size)
    return font


def _centered(draw: ImageDraw.ImageDraw, width: int, y: int, text: str, font, fill) -> None:
    draw.text(((width - draw.textlength(text, font=font)) / 2, y), text, font=font, fill=fill)


@dataclass(frozen=True)
class QrBox:
    left: int  # top-left corner of the first module (inside the quiet zone)
    top: int
    scale: int  # pixels per module
    size: int  # modules per side
    side: int  # pixels per side, quiet zone included


QR_BORDER = 4  # quiet zone, in modules
POSTER_QR = (470, 440)  # top, largest side (px)
PRICE_LIST_QR_TOP = 300 + PRICE_LIST_ROWS * 80 + 30
PRICE_LIST_QR_SIDE = 400


def qr_box(width: int, link: str, top: int, side: int) -> QrBox:
    """Where the link's QR code goes: centred on an image `width` wide, at `top`, at most `side` px square."""
    size = len(segno.make(link, error="m").matrix)
    scale = max(2, side // (size + 2 * QR_BORDER))
    total = (size + 2 * QR_BORDER) * scale
    left = (width - total) // 2
    return QrBox(left + QR_BORDER * scale, top + QR_BORDER * scale, scale, size, total)


def _qr(image: Image.Image, link: str, top: int, side: int) -> int:
    """Draw the link's QR code (quiet zone included, on white) as qr_box places it; returns the side drawn."""
    box = qr_box(image.width, link, top, side)
    draw = ImageDraw.Draw(image)
    outer = box.left - QR_BORDER * box.scale, box.top - QR_BORDER * box.scale
    draw.rectangle((outer[0], outer[1], outer[0] + box.side - 1, outer[1] + box.side - 1), fill=WHITE)
    for r, row in enumerate(segno.make(link, error="m").matrix):
        for c, dark in enumerate(row):
            if dark:
                x, y = box.left + c * box.scale, box.top + r * box.scale
                draw.rectangle((x, y, x + box.scale - 1, y + box.scale - 1), fill=BLACK)
    return box.side


def _logo(shop: AgentShop, side: int) -> Image.Image | None:
    if not shop.logo_png:
        return None
    logo = Image.open(io.BytesIO(shop.logo_png)).convert("RGBA")
    logo.thumbnail((side, side))
    return logo


def _band(image: Image.Image, shop: AgentShop, height: int, title_size: int, subtitle: str | None) -> None:
    band, band_text, _accent, _bg, _stripe = _palette(shop.theme)
    width = image.width
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, height), fill=band)
    logo = _logo(shop, height - 60)
    title_font = _fit(draw, shop.name, title_size, width - 80 - (height if logo else 0))
    if logo is not None:
        image.paste(logo, (40, (height - logo.height) // 2), logo)
        draw.text((40 + logo.width + 30, height // 2 - title_size // 2 - (18 if subtitle else 0)), shop.name,
                  font=title_font, fill=band_text)
        if subtitle:
            draw.text((40 + logo.width + 30, height // 2 + title_size // 2 - 8), subtitle,
                      font=load_font(title_size // 2), fill=band_text)
    else:
        _centered(draw, width, height // 2 - title_size // 2 - (20 if subtitle else 0), shop.name, title_font,
                  band_text)
        if subtitle:
            _centered(draw, width, height // 2 + title_size // 2 - 4, subtitle, load_font(title_size // 2),
                      band_text)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


# --- the drawings -----------------------------------------------------------------------------------------------

def draw_poster(shop: AgentShop, product_name: str, category: str, price: int, link: str) -> bytes:
    """A product's poster (750 × 1200): the shop's band, the product, its shop price, the link's QR code."""
    load_font(20)  # fail before drawing anything
    _band_colour, _band_text, accent, background, _stripe = _palette(shop.theme)
    text = _text_colour(shop.theme)
    width, height = POSTER_SIZE
    image = Image.new("RGB", POSTER_SIZE, background)
    _band(image, shop, 170, 54, None)
    draw = ImageDraw.Draw(image)
    _centered(draw, width, 210, category, load_font(28), GREY)
    _centered(draw, width, 255, product_name, _fit(draw, product_name, 46, width - 80), text)
    price_text = format_fen(price)
    _centered(draw, width, 325, price_text, _fit(draw, price_text, 88, width - 80), accent)
    top, side = POSTER_QR
    drawn = _qr(image, link, top, side)
    bottom = top + drawn
    _centered(draw, width, bottom + 24, _("长按识别二维码，立即购买"), load_font(32), text)
    _centered(draw, width, bottom + 74, link, _fit(draw, link, 22, width - 60), GREY)
    if shop.contact:
        contact = _("店主联系方式：%(contact)s", contact=shop.contact)
        _centered(draw, width, height - 110, contact, _fit(draw, contact, 26, width - 60), text)
    _centered(draw, width, height - 60, _("平台自动发货 · 卡密即买即得"), load_font(24), GREY)
    return _png(image)


def draw_price_list(shop: AgentShop, rows: list[tuple[str, int]], link: str, day: str) -> bytes:
    """The price list (1080 × 1920, a phone screen for live streams and WeChat moments): the shop's band, up to
    PRICE_LIST_ROWS products with their shop prices, the shop link's QR code."""
    load_font(20)
    _band_colour, _band_text, accent, background, stripe = _palette(shop.theme)
    text = _text_colour(shop.theme)
    width, height = PRICE_LIST_SIZE
    image = Image.new("RGB", PRICE_LIST_SIZE, background)
    _band(image, shop, 260, 72, _("今日价格表 · %(day)s", day=day))
    draw = ImageDraw.Draw(image)
    rows = rows[:PRICE_LIST_ROWS]
    top, bottom = 300, PRICE_LIST_QR_TOP - 40
    # Fewer products get taller rows and larger type: the list fills the space above the QR code.
    row_height = max(80, min(150, (bottom - top) // max(1, len(rows))))
    name_size, price_size = row_height * 36 // 80, row_height * 42 // 80
    for i, (name, price) in enumerate(rows):
        y = top + i * row_height
        if i % 2 == 0:
            draw.rectangle((40, y, width - 40, y + row_height - 8), fill=stripe)
        price_text = format_fen(price)
        price_font = load_font(min(price_size, 64))
        price_width = draw.textlength(price_text, font=price_font)
        name_font = _fit(draw, name, min(name_size, 56), int(width - 180 - price_width))
        middle = y + (row_height - 8) // 2
        draw.text((70, middle), name, font=name_font, fill=text, anchor="lm")
        draw.text((width - 70, middle), price_text, font=price_font, fill=accent, anchor="rm")
    if not rows:
        _centered(draw, width, top + 40, _("暂无商品"), load_font(40), GREY)
    qr_top = PRICE_LIST_QR_TOP
    drawn = _qr(image, link, qr_top, PRICE_LIST_QR_SIDE)
    _centered(draw, width, qr_top + drawn + 20, _("扫码进店 · 下单自动发货"), load_font(40), text)
    footer = _("店主联系方式：%(contact)s", contact=shop.contact) if shop.contact else link
    _centered(draw, width, height - 80, footer, _fit(draw, footer, 30, width - 80), GREY)
    return _png(image)


# --- copy text ----------------------------------------------------------------------------------------------------

def product_copy(shop: AgentShop, product_name: str, price: int, link: str) -> str:
    lines = [f"【{shop.name}】{product_name}",
             _("店铺价 %(price)s，付款后自动发货，卡密即买即得。", price=format_fen(price)),
             _("下单链接：%(link)s", link=link)]
    if shop.contact:
        lines.append(_("联系店主：%(contact)s", contact=shop.contact))
    return "\n".join(lines)


def price_list_copy(shop: AgentShop, rows: list[tuple[str, int]], link: str) -> str:
    lines = [_("【%(shop)s】今日价格表", shop=shop.name)]
    lines += [f"· {name} {format_fen(price)}" for name, price in rows[:PRICE_LIST_ROWS]]
    lines.append(_("进店下单：%(link)s", link=link))
    if shop.contact:
        lines.append(_("联系店主：%(contact)s", contact=shop.contact))
    return "\n".join(lines)


# --- cache --------------------------------------------------------------------------------------------------------

def fingerprint(kind: str, shop: AgentShop, inputs: list) -> str:
    # the words on an image are in the language of the agent who asked for it: one cached image per language
    locale = str(get_locale() or "zh")
    canonical = json.dumps([LAYOUT_VERSION, kind, shop.name, shop.theme, shop.contact, shop.logo_version, inputs,
                            locale], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def cached_png(shop: AgentShop, kind: str, product_id: int | None, inputs: list, draw: Callable[[], bytes]) -> bytes:
    """The image for these inputs: the cached one, or drawn now and stored (older images of the same poster are
    dropped). Commits."""
    key = fingerprint(kind, shop, inputs)
    png = db.session.scalar(select(AgentShopMaterial.png).where(
        AgentShopMaterial.shop_id == shop.id, AgentShopMaterial.kind == kind, AgentShopMaterial.fingerprint == key))
    if png is not None:
        return png
    png = draw()
    same = [AgentShopMaterial.shop_id == shop.id, AgentShopMaterial.kind == kind]
    same.append(AgentShopMaterial.product_id == product_id if product_id is not None
                else AgentShopMaterial.product_id.is_(None))
    try:
        db.session.execute(delete(AgentShopMaterial).where(*same, AgentShopMaterial.fingerprint != key))
        with db.session.begin_nested():
            db.session.add(AgentShopMaterial(shop_id=shop.id, kind=kind, product_id=product_id, fingerprint=key,
                                             png=png))
        db.session.commit()
    except Exception:  # drawn concurrently by another request: theirs is the same image
        db.session.rollback()
    return png


def today_label() -> str:
    local = to_local(utcnow())
    return _("%(month)s月%(day)s日", month=local.month, day=local.day)
