"""Form fields that let operators type yuan and percentages while the database keeps fen and basis points."""
from __future__ import annotations

from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
from flask_babel import gettext, lazy_gettext
from wtforms import BooleanField, Field
from wtforms.validators import NumberRange, ValidationError

from app.money import format_fen, parse_yuan


def _plain(text: str) -> str:
    """FAB renders field errors through gettext with %-formatting (`{{ _(error) }}`): a bare '%' in an error
    (or in the user's input echoed by it) raises ValueError and answers 500. Show a full-width '％' instead."""
    return text.replace("%", "％")


class YuanField(Field):
    """Shows fen as '12.50'; parses '12.5', '¥12.50', '12元' back to fen (an int)."""

    widget = BS3TextFieldWidget()

    def __init__(self, label=None, validators=None, min_fen: int | None = 0, max_fen: int | None = None,
                 allow_negative: bool = False, **kwargs):
        super().__init__(label, validators, **kwargs)
        self.min_fen = None if allow_negative else min_fen
        self.max_fen = max_fen

    def _value(self) -> str:
        if self.raw_data:
            return self.raw_data[0]
        return format_fen(self.data, symbol=False).replace(",", "") if self.data is not None else ""

    def process_formdata(self, valuelist):
        if not valuelist or valuelist[0].strip() == "":
            self.data = None
            return
        try:
            self.data = parse_yuan(valuelist[0])
        except ValueError:
            self.data = None
            message = gettext("金额格式不正确: %(value)s（例如 12.50）", value=repr(valuelist[0][:32]))
            raise ValueError(_plain(message)) from None

    def pre_validate(self, form):
        if self.data is None:
            return
        if self.min_fen is not None and self.data < self.min_fen:
            raise ValidationError(gettext("金额不能小于 %(amount)s", amount=format_fen(self.min_fen)))
        if self.max_fen is not None and self.data > self.max_fen:
            raise ValidationError(gettext("金额不能大于 %(amount)s", amount=format_fen(self.max_fen)))


class PercentField(Field):
    """Shows basis points as '95.00' (percent); parses '95' or '95.5%' back to basis points (an int)."""

    widget = BS3TextFieldWidget()

    def __init__(self, label=None, validators=None, min_bp: int = 0, max_bp: int = 10000, **kwargs):
        super().__init__(label, validators, **kwargs)
        self.min_bp, self.max_bp = min_bp, max_bp

    def _value(self) -> str:
        if self.raw_data:
            return self.raw_data[0]
        return f"{self.data / 100:.2f}" if self.data is not None else ""

    def process_formdata(self, valuelist):
        if not valuelist or valuelist[0].strip() == "":
            self.data = None
            return
        raw = valuelist[0].strip().rstrip("%").strip()
        try:
            whole, _, frac = raw.partition(".")
            if not whole.isdigit() or (frac and (not frac.isdigit() or len(frac) > 2)):
                raise ValueError
            self.data = int(whole) * 100 + int((frac or "0").ljust(2, "0"))
        except ValueError:
            self.data = None
            message = gettext("百分比格式不正确: %(value)s（例如 95 或 95.5）", value=repr(valuelist[0][:32]))
            raise ValueError(_plain(message)) from None

    def pre_validate(self, form):
        if self.data is not None and not (self.min_bp <= self.data <= self.max_bp):
            low, high = f"{self.min_bp / 100:.2f}", f"{self.max_bp / 100:.2f}"
            raise ValidationError(_plain(gettext("必须在 %(low)s%% 到 %(high)s%% 之间", low=low, high=high)))


def checkbox(label, default: bool = False) -> BooleanField:
    """FAB makes a NOT NULL boolean column `InputRequired`, so an unchecked box (no input) fails validation and a
    product, agent or tier can never be switched off through its form. Use this field instead."""
    return BooleanField(label, default=default)


def int_range(low: int, high: int) -> NumberRange:
    """Bounds for integer columns, so an out-of-range number is a form error rather than a database error."""
    return NumberRange(min=low, max=high, message=lazy_gettext("必须在 %(low)s 到 %(high)s 之间", low=low, high=high))
