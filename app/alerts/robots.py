"""The three group robots' webhook protocols (DingTalk, WeCom, Feishu) and e-mail, as the alert job sends them.

Sources (shared/PROTOCOLS.md section 4, checked again with the search tool; "unconfirmed" = no source found):

- DingTalk custom robot: `POST https://oapi.dingtalk.com/robot/send?access_token=T`, JSON body. With 加签 the
  query also carries `timestamp` (epoch milliseconds) and `sign` = urlencode(base64(HMAC-SHA256(key=secret,
  msg=timestamp + "\\n" + secret))); the robot refuses a timestamp more than an hour off. Every answer is HTTP 200
  with `{"errcode", "errmsg"}`: 0 accepted; 310000 wrong sign, stale timestamp or missing keyword; 300001 unknown
  token ("token is not exist"); 130101 "send too fast, exceed 20 times per minute" (the robot then refuses for 10
  minutes); 400402 a missing parameter. (errmsg "ok" on success: unconfirmed; only errcode is read.)
- WeCom group robot: `POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K`, unsigned (the key is the
  secret). `{"errcode": 0, "errmsg": "ok"}` accepted; 93000 "invalid webhook url" (unknown key); text content at
  most 2048 bytes, markdown 4096; 20 messages a minute. The throttling and too-long errcodes (45009, 40058 here)
  are unconfirmed.
- Feishu custom robot: `POST https://open.feishu.cn/open-apis/bot/v2/hook/T`; with 签名校验 the body carries
  `timestamp` (epoch seconds) and `sign` = base64(HMAC-SHA256(key=timestamp + "\\n" + secret, msg="")).
  `{"code": 0, "msg": "success"}` accepted (older answers also carry StatusCode 0); 19021 wrong sign or a timestamp
  more than an hour off, 19022 address not allowed, 19024 missing keyword, 9499 bad request (also a body over
  20 KB), 11232 throttled (100 a minute and 5 a second per robot). Whether `timestamp` is a number or a string is
  unconfirmed (clients send both); we send the string of digits, as the documentation's example reads.

Messages go as plain text (DingTalk, WeCom) or a Feishu `post` (a title and text paragraphs), never markdown: a
product or supplier name cannot turn into markup or a link. Bodies are capped below each robot's limit.
Every call goes through app/outbound.py (the fence: no private addresses in production, no redirects, capped).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask_babel import gettext as _

from app import outbound

DINGTALK_TEXT_BYTES = 4000  # the robot's own text limit is unconfirmed; messages stay far below it
WECOM_TEXT_BYTES = 2048
FEISHU_BODY_BYTES = 20 * 1024
TIMEOUT = (5.0, 10.0)

# Per robot kind: (most requests, within seconds), every window enforced before a request leaves (service.py).
RATE_LIMITS = {"dingtalk": ((20, 60),), "wecom": ((20, 60),), "feishu": ((100, 60), (5, 1)), "email": ()}
# Answers that mean "too fast": try again after this long (DingTalk keeps refusing for 10 minutes).
THROTTLED = {("dingtalk", 130101): timedelta(minutes=10), ("wecom", 45009): timedelta(minutes=1),
             ("feishu", 11232): timedelta(minutes=1)}
# Answers that no retry can change: the robot does not exist, or the secret or security settings do not match.
PERMANENT = {("dingtalk", 300001), ("dingtalk", 310000), ("dingtalk", 400402), ("wecom", 93000),
             ("feishu", 19001), ("feishu", 19021), ("feishu", 19022), ("feishu", 19024), ("feishu", 9499)}


@dataclass(frozen=True)
class Message:
    title: str
    lines: list[str] = field(default_factory=list)
    link: str | None = None

    def text(self) -> str:
        parts = [self.title, "", *self.lines]
        if self.link:
            parts += ["", self.link]
        return "\n".join(parts)


class SendError(Exception):
    """A message that did not leave. `temporary`: worth another try; `retry_after`: the channel asked us to wait."""

    def __init__(self, message: str, temporary: bool = True, retry_after: timedelta | None = None):
        super().__init__(message)
        self.message, self.temporary, self.retry_after = message, temporary, retry_after


# --- signatures ----------------------------------------------------------------------------------------------

def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")); the query string URL-encodes it."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b"")): the key is the string to sign, the message
    empty (unlike DingTalk)."""
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def with_query(url: str, **params: str) -> str:
    """The URL with params added to its query (each value URL-encoded once)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def clip(text: str, max_bytes: int) -> str:
    """At most max_bytes of UTF-8, cut at a character boundary, with an ellipsis when cut."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes - 3].decode(errors="ignore") + "…"


# --- requests ------------------------------------------------------------------------------------------------

def build_request(kind: str, webhook: str, secret: str | None, message: Message,
                  now: float | None = None) -> tuple[str, bytes]:
    """(url, body) of one robot message, signed when the robot has a secret."""
    now = time.time() if now is None else now
    if kind == "dingtalk":
        url = webhook
        if secret:
            ts = int(now * 1000)
            url = with_query(webhook, timestamp=str(ts), sign=dingtalk_sign(secret, ts))
        body = {"msgtype": "text", "text": {"content": clip(message.text(), DINGTALK_TEXT_BYTES)},
                "at": {"isAtAll": False}}
        return url, json.dumps(body, ensure_ascii=False).encode()
    if kind == "wecom":
        body = {"msgtype": "text", "text": {"content": clip(message.text(), WECOM_TEXT_BYTES)}}
        return webhook, json.dumps(body, ensure_ascii=False).encode()
    if kind == "feishu":
        return webhook, _feishu_body(secret, message, now)
    raise ValueError(f"unknown robot kind {kind!r}")


def _feishu_body(secret: str | None, message: Message, now: float) -> bytes:
    lines = list(message.lines)
    while True:
        paragraphs = [[{"tag": "text", "text": line}] for line in lines]
        if message.link:
            paragraphs.append([{"tag": "a", "text": message.link, "href": message.link}])
        body: dict = {"msg_type": "post",
                      "content": {"post": {"zh_cn": {"title": clip(message.title, 512), "content": paragraphs}}}}
        if secret:
            ts = int(now)
            body = {"timestamp": str(ts), "sign": feishu_sign(secret, ts), **body}
        raw = json.dumps(body, ensure_ascii=False).encode()
        if len(raw) <= FEISHU_BODY_BYTES - 512 or not lines:
            return raw
        lines = lines[:-1]  # drop detail lines from the end until it fits


def send_robot(kind: str, webhook: str, secret: str | None, message: Message) -> None:
    """POST one message to a robot through the outbound fence; SendError unless the robot accepted it."""
    url, body = build_request(kind, webhook, secret, message)
    try:
        response = outbound.post(url, data=body, timeout=TIMEOUT,
                                 headers={"Content-Type": "application/json; charset=utf-8"})
    except outbound.FAILURES as exc:
        raise SendError(_("%(robot)s 无法连接：%(reason)s", robot=_name(kind),
                          reason=outbound.short_reason(exc))) from None
    code, text = _answer(kind, response)
    if code == 0:
        return
    if response.status_code == 429:
        raise SendError(f"{_name(kind)} HTTP 429", retry_after=timedelta(minutes=1))
    if code is None:
        raise SendError(_("%(robot)s HTTP %(status)s：无法识别的应答", robot=_name(kind), status=response.status_code))
    detail = f"{_name(kind)} {code}: {text[:160]}"
    if (kind, code) in THROTTLED:
        raise SendError(detail, retry_after=THROTTLED[(kind, code)])
    raise SendError(detail, temporary=(kind, code) not in PERMANENT)


def _answer(kind: str, response) -> tuple[int | None, str]:
    """(the robot's code, its message) from a JSON answer whatever the HTTP status; (None, "") otherwise."""
    try:
        data = json.loads(response.content or b"null")
    except ValueError:
        return None, ""
    if not isinstance(data, dict):
        return None, ""
    if kind == "feishu":
        code = data.get("code", data.get("StatusCode"))
        text = data.get("msg", data.get("StatusMessage", ""))
    else:
        code, text = data.get("errcode"), data.get("errmsg", "")
    if isinstance(code, bool) or not isinstance(code, int):
        return None, ""
    return code, " ".join(str(text).split())


def _name(kind: str) -> str:
    return {"dingtalk": _("钉钉"), "wecom": _("企业微信"), "feishu": _("飞书")}.get(kind, kind)


# --- e-mail --------------------------------------------------------------------------------------------------

def send_email(recipients: list[str], message: Message, site: str) -> None:
    """Through the platform's SMTP server (app/notices/mailer.py: SMTP_* or 平台设置), one message to every
    recipient; SendError (temporary unless the server refused for good)."""
    from app.notices import mailer
    from app.notices.errors import DeliveryError

    try:
        settings = mailer.smtp_settings()
        email = EmailMessage()
        email["Subject"] = f"【{site}】{message.title}"
        email["From"] = settings.sender
        email["To"] = ", ".join(recipients)
        email["Date"] = formatdate(localtime=False)
        domain = parseaddr(settings.sender)[1].rpartition("@")[2] or None
        email["Message-ID"] = make_msgid(domain=domain)
        email.set_content(message.text() + "\n")
        mailer.send(email, settings)
    except DeliveryError as exc:
        raise SendError(exc.message, temporary=exc.temporary) from None
