"""The delivery e-mail: composed in the buyer's language (zh_CN, or English), sent over SMTP with smtplib.

Settings come from the environment (SMTP_HOST, SMTP_PORT, SMTP_USER, SMTP_PASSWORD, SMTP_FROM, SMTP_TLS) and can be
overridden in 平台设置 (app.settings; the password stored encrypted). SMTP_TLS: `starttls` (the default: the
password never crosses in clear; a server without STARTTLS is refused), `ssl` (implicit TLS) or `none`.
Every connection step has a timeout (SMTP_TIMEOUT). smtplib's debug output stays off: it would print the message.

The SMTP host is an operator's setting (environment or an Admin-only form), not something a buyer or an agent
can point anywhere, so it is not fenced like outbound HTTP (app/outbound.py): a relay on the same host or the
private network is the usual set-up.
"""
from __future__ import annotations

import html
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from flask import current_app
from flask_babel import force_locale, gettext

from app.money import format_fen
from app.notices.addresses import parse_sender
from app.notices.errors import DeliveryError

DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    user: str
    password: str
    sender: str
    tls: str
    timeout: float


def smtp_settings() -> SmtpSettings:
    """The SMTP server as configured now: 平台设置 over the environment. DeliveryError when it is incomplete."""
    from app.settings import service as settings

    host = (settings.get("smtp_host") or "").strip()
    sender = (settings.get("smtp_from") or "").strip()
    if not host or not sender:
        raise DeliveryError(gettext("未配置发信服务器（SMTP_HOST / SMTP_FROM）"))
    tls = settings.get("smtp_tls") or "starttls"
    port = int(settings.get("smtp_port") or 0) or DEFAULT_PORTS.get(tls, 587)
    return SmtpSettings(host=host, port=port, user=settings.get("smtp_user") or "",
                        password=settings.get("smtp_password") or "", sender=parse_sender(sender), tls=tls,
                        timeout=float(current_app.config.get("SMTP_TIMEOUT") or 15))


def compose(order, recipient: str, secrets: list[str], locale: str, lookup_url: str,
            sender: str | None = None) -> EmailMessage:
    """The delivery e-mail for one order: plain text and HTML alternatives with the same content."""
    site = str(current_app.config.get("APP_NAME") or "Kameng")
    with force_locale("en" if locale == "en" else "zh"):
        subject = gettext("【%(site)s】订单 %(order_no)s 已发货", site=site, order_no=order.order_no)
        greeting = gettext("您好，您购买的商品已发货。")
        rows = [(gettext("订单号"), order.order_no),
                (gettext("商品名称"), f"{order.product.name} × {order.quantity}"),
                (gettext("金额"), format_fen(order.amount))]
        secrets_title = gettext("卡密")
        direct_note = gettext("本订单为直充商品，已充值到账。")
        lookup_title = gettext("查询订单（凭订单号和查询密码）")
        keep_safe = gettext("请妥善保管卡密，不要转发本邮件。如有问题，请在订单查询页面申请售后。")
        footer = gettext("此邮件由系统自动发送，请勿回复。")
    lines = [greeting, ""]
    lines += [f"{label}：{value}" for label, value in rows]
    if secrets:
        lines += ["", f"{secrets_title}："] + [f"  {n}. {secret}" for n, secret in enumerate(secrets, start=1)]
    else:
        lines += ["", direct_note]
    lines += ["", f"{lookup_title}：", lookup_url, "", keep_safe, "", f"—— {site}", footer]

    e = html.escape
    body = [f"<p>{e(greeting)}</p>", "<table>"]
    body += [f"<tr><th align=\"left\">{e(label)}</th><td>{e(value)}</td></tr>" for label, value in rows]
    body.append("</table>")
    if secrets:
        body.append(f"<p><b>{e(secrets_title)}</b></p><ol>")
        body += [f"<li><code>{e(secret)}</code></li>" for secret in secrets]
        body.append("</ol>")
    else:
        body.append(f"<p>{e(direct_note)}</p>")
    body.append(f"<p>{e(lookup_title)}：<br><a href=\"{e(lookup_url)}\">{e(lookup_url)}</a></p>")
    body.append(f"<p>{e(keep_safe)}</p><p>—— {e(site)}<br><small>{e(footer)}</small></p>")

    message = EmailMessage()
    sender = sender or smtp_settings().sender
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = formatdate(localtime=False)
    domain = parseaddr(sender)[1].rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content("\n".join(lines) + "\n")
    message.add_alternative("<!doctype html><html><body>" + "".join(body) + "</body></html>", subtype="html")
    return message


def send(message: EmailMessage, settings: SmtpSettings | None = None) -> None:
    """Hand the message to the SMTP server. DeliveryError (temporary unless the server refused for good)."""
    settings = settings or smtp_settings()
    context = ssl.create_default_context()
    try:
        if settings.tls == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout,
                                                  context=context)
        else:
            smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with smtp:
            smtp.ehlo()
            if settings.tls == "starttls":
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(gettext("%(host)s 不支持 STARTTLS（SMTP_TLS=starttls）", host=settings.host))
                smtp.starttls(context=context)
                smtp.ehlo()
            if settings.user:
                smtp.login(settings.user, settings.password)
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(_reply(code, text) for code, text in exc.recipients.values())
        raise DeliveryError(gettext("收件人被拒绝：%(detail)s", detail=detail),
                            temporary=not codes or min(codes) < 500) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(gettext("SMTP 登录失败：%(reply)s", reply=_reply(exc.smtp_code, exc.smtp_error))) from None
    except smtplib.SMTPResponseException as exc:  # sender refused, data refused, ...
        raise DeliveryError(f"SMTP {_reply(exc.smtp_code, exc.smtp_error)}",
                            temporary=not 500 <= exc.smtp_code < 600) from None
    except (TimeoutError, smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        # connection refused, timeout, TLS failure, server gone: the server could not be reached
        error = f"{type(exc).__name__}: {str(exc)[:120]}"
        raise DeliveryError(gettext("发信服务器不可用（SMTP %(host)s:%(port)s：%(error)s）", host=settings.host,
                                    port=settings.port, error=error)) from None


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{code} {' '.join(str(text).split())[:160]}"
