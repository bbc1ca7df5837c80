"""A buyer's e-mail address and mobile number, and the sender's address, as the notices take them: checked by the
checkout (app.payments.service), the settings (SMTP_FROM), the SMTP sender and the notice service alike."""
from __future__ import annotations

import re
from email.utils import formataddr, parseaddr

from flask_babel import gettext as _

from app.errors import ValidationError
from app.notices.errors import InvalidEmail

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?=.{4,253}$)"
                    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


_PHONE_SPELLING = re.compile(r"^\+?[\d\s()-]{7,24}$")


def clean_email(value: object) -> str | None:
    """The buyer's optional e-mail: None when absent, else one plain address (no display name, no spaces, no line
    breaks: it goes into a header) of at most 254 characters. InvalidEmail otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value.strip()) > 254 or not _EMAIL.match(value.strip()):
        raise InvalidEmail(_("邮箱地址格式不正确"))
    return value.strip()


def parse_sender(value: str) -> str:
    """SMTP_FROM as a header: "shop@example.com" or "卡盟 <shop@example.com>". ValidationError otherwise."""
    if not isinstance(value, str) or any(c in value for c in "\r\n"):
        raise ValidationError(_("发件人须为邮箱地址或「名称 <邮箱地址>」"))
    name, address = parseaddr(value)
    if not address or not _EMAIL.match(address):
        raise ValidationError(_("发件人须为邮箱地址或「名称 <邮箱地址>」"))
    return formataddr((name, address)) if name else address


def mobile_number(contact: object) -> str | None:
    """A mainland China mobile number as the SMS provider takes it (11 digits), or None for anything else."""
    import phonenumbers

    if not isinstance(contact, str) or not _PHONE_SPELLING.match(contact.strip()):
        return None  # "QQ 13800138000" is a QQ number, not a phone, whatever digits it holds
    try:
        number = phonenumbers.parse(contact.strip(), "CN")
    except phonenumbers.NumberParseException:
        return None
    if number.country_code != 86 or not phonenumbers.is_valid_number(number):
        return None
    if phonenumbers.number_type(number) not in (phonenumbers.PhoneNumberType.MOBILE,
                                                phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE):
        return None
    return str(number.national_number)
