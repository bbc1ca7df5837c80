"""A local receiver for the three group robots (DingTalk, WeCom, Feishu) for the demo and the tests: plain WSGI,
thread-safe. `flask kameng robot-sim --port P` serves it; the protocols and their sources are in
app/alerts/robots.py.

Robot endpoints (the real paths, so a webhook copied from a robot's settings only changes its host):
- DingTalk `POST /robot/send?access_token=T[&timestamp=MS&sign=S]`: unknown token → errcode 300001 "token is not
  exist"; a robot with a secret needs timestamp (epoch ms, within one hour of the simulator's clock, either way) and
  sign = base64(HMAC-SHA256(secret, timestamp + "\\n" + secret)), else 310000 ("invalid timestamp" / "sign not
  match"); more than 20 messages in 60 s → 130101 "send too fast, exceed 20 times per minute", and every message for
  the next 10 minutes is refused the same way; a body that is not JSON, or a text message without content, or a
  markdown one without title or text → 400402. Accepted: {"errcode": 0, "errmsg": "ok"}.
- WeCom `POST /cgi-bin/webhook/send?key=K`: unknown key → 93000 "invalid webhook url"; text content over 2048
  bytes or markdown content over 4096 → 40058 (code unconfirmed); more than 20 in 60 s → 45009 (unconfirmed).
  Accepted: {"errcode": 0, "errmsg": "ok"}.
- Feishu `POST /open-apis/bot/v2/hook/<token>`: unknown token → code 19001 (unconfirmed); a body over 20 KB or not
  JSON, or without msg_type/content → 9499 "Bad Request"; a robot with a secret needs timestamp (epoch seconds, a
  number or a string of digits, within one hour) and sign = base64(HMAC-SHA256(key=timestamp + "\\n" + secret,
  msg="")), else 19021 "sign match fail or timestamp is not within one hour from current time"; more than 5 in one
  second or 100 in 60 s → 11232. Accepted: {"code": 0, "msg": "success", "data": {}}.
All answers are HTTP 200 with the robot's code, as the real robots answer their own refusals.

Control API (JSON, unsigned; tests and demos only):
`POST /_sim/robots` {"kind": "dingtalk"|"wecom"|"feishu", "signed": true|false} registers a robot and answers
{"kind", "token", "secret" (null when unsigned or WeCom), "webhook"}; `GET /_sim/messages[?kind=K]` what was accepted
[{"kind", "token", "body", "received_at"}]; `GET /_sim/requests` every request with its answer code
[{"kind", "token", "code"}]; `POST /_sim/behaviour` {"fail": a code to answer instead of accepting (e.g. 130101),
"fail_times": n (0 = for ever), "http_status": 200|500|503, "skew_seconds": the simulator's clock ahead (+) or
behind (-)}; `POST /_sim/reset` forgets messages, requests, limits and behaviour (the robots stay).
"""
from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections import deque

from werkzeug.wrappers import Request, Response

from app.alerts.robots import dingtalk_sign, feishu_sign

KINDS = ("dingtalk", "wecom", "feishu")
SKEW_LIMIT_S = 3600
FEISHU_BODY_LIMIT = 20 * 1024
DEFAULT_BEHAVIOUR = {"fail": None, "fail_times": 0, "http_status": 200, "skew_seconds": 0}
DINGTALK_THROTTLE_S = 600


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")


class RobotSimulator:
    def __init__(self):
        self.lock = threading.RLock()
        self.robots: dict[tuple[str, str], dict] = {}
        self.base_url = ""  # set by whoever serves it, for the webhooks /_sim/robots returns
        self._reset()

    def _reset(self) -> None:
        with self.lock:
            self.messages: list[dict] = []
            self.requests: list[dict] = []
            self.sent: dict[tuple[str, str], deque] = {}
            self.throttled_until: dict[tuple[str, str], float] = {}
            self.behaviour = dict(DEFAULT_BEHAVIOUR)
            self.failures = 0

    def now(self) -> float:
        return time.time() + float(self.behaviour.get("skew_seconds") or 0)

    # --- WSGI ------------------------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        if not self.base_url:
            self.base_url = request.host_url.rstrip("/")
        try:
            response = self.route(request)
        except Exception as exc:  # pragma: no cover - a bug in the simulator: say so
            response = _json({"error": f"simulator error: {type(exc).__name__}: {exc}"}, 500)
        return response(environ, start_response)

    def route(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/_sim/"):
            return self.control(request, path[len("/_sim/"):])
        if request.method != "POST":
            return _json({"error": "POST only"}, 405)
        if path == "/robot/send":
            return self.robot(request, "dingtalk", request.args.get("access_token", ""))
        if path == "/cgi-bin/webhook/send":
            return self.robot(request, "wecom", request.args.get("key", ""))
        if path.startswith("/open-apis/bot/v2/hook/"):
            return self.robot(request, "feishu", path.rsplit("/", 1)[-1])
        return _json({"error": "not found"}, 404)

    # --- the robots ------------------------------------------------------------------------------------------

    def robot(self, request: Request, kind: str, token: str) -> Response:
        with self.lock:
            status = int(self.behaviour.get("http_status") or 200)
            if status != 200:  # the robot's front end is down: nothing is looked at or accepted
                self.requests.append({"kind": kind, "token": token, "code": None, "http_status": status})
                return Response("server error", status=status)
            code, message = self._check(request, kind, token)
            self.requests.append({"kind": kind, "token": token, "code": code})
        if kind == "feishu":
            body = {"code": code, "msg": message, "data": {}}
            if code == 0:
                body.update({"StatusCode": 0, "StatusMessage": "success"})
            return _json(body)
        return _json({"errcode": code, "errmsg": message})

    def _check(self, request: Request, kind: str, token: str) -> tuple[int, str]:
        robot = self.robots.get((kind, token))
        raw = request.get_data(cache=False)
        if robot is None:
            return {"dingtalk": (300001, "token is not exist"), "wecom": (93000, "invalid webhook url"),
                    "feishu": (19001, "param invalid: incoming webhook access token invalid")}[kind]
        if kind == "feishu" and len(raw) > FEISHU_BODY_LIMIT:
            return 9499, "Bad Request"
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return {"dingtalk": (400402, "miss param : msgtype"), "wecom": (40008, "invalid message type"),
                    "feishu": (9499, "Bad Request")}[kind]
        signed = self._check_signature(kind, robot, request, body)
        if signed is not None:
            return signed
        shape = self._check_shape(kind, body)
        if shape is not None:
            return shape
        limited = self._check_rate(kind, token)
        if limited is not None:
            return limited
        fail = self.behaviour.get("fail")
        if fail is not None and (not self.behaviour.get("fail_times") or self.failures < self.behaviour["fail_times"]):
            self.failures += 1
            return int(fail), "simulated failure"
        self.sent.setdefault((kind, token), deque()).append(self.now())
        self.messages.append({"kind": kind, "token": token, "body": body, "received_at": self.now()})
        return (0, "success") if kind == "feishu" else (0, "ok")

    def _check_signature(self, kind: str, robot: dict, request: Request, body: dict) -> tuple[int, str] | None:
        secret = robot.get("secret")
        if not secret or kind == "wecom":
            return None
        if kind == "dingtalk":
            ts, sign = request.args.get("timestamp", ""), request.args.get("sign", "")
            if not ts.isdigit() or abs(self.now() * 1000 - int(ts)) > SKEW_LIMIT_S * 1000:
                return 310000, "invalid timestamp"
            if not hmac.compare_digest(sign, dingtalk_sign(secret, int(ts))):
                return 310000, "sign not match"
            return None
        ts, sign = body.get("timestamp"), body.get("sign")
        if isinstance(ts, str) and ts.isdigit():
            ts = int(ts)
        if isinstance(ts, bool) or not isinstance(ts, int) or not isinstance(sign, str) \
                or abs(self.now() - ts) > SKEW_LIMIT_S or not hmac.compare_digest(sign, feishu_sign(secret, ts)):
            return 19021, "sign match fail or timestamp is not within one hour from current time"
        return None

    @staticmethod
    def _check_shape(kind: str, body: dict) -> tuple[int, str] | None:
        if kind == "dingtalk":
            msgtype = body.get("msgtype")
            if msgtype == "text" and not (body.get("text") or {}).get("content"):
                return 400402, "miss param : text->content"
            if msgtype == "markdown" and not all((body.get("markdown") or {}).get(k) for k in ("title", "text")):
                return 400402, "miss param : markdown->title"
            if msgtype not in ("text", "markdown", "link", "actionCard", "feedCard"):
                return 400402, "miss param : msgtype"
            return None
        if kind == "wecom":
            msgtype = body.get("msgtype")
            content = (body.get(msgtype) or {}).get("content") if msgtype in ("text", "markdown") else None
            if not isinstance(content, str) or not content:
                return 40008, "invalid message type"
            if len(content.encode()) > (2048 if msgtype == "text" else 4096):
                return 40058, "content exceed max length"
            return None
        if body.get("msg_type") not in ("text", "post", "image", "share_chat", "interactive") or \
                not (body.get("content") or body.get("card")):
            return 9499, "Bad Request"
        return None

    def _check_rate(self, kind: str, token: str) -> tuple[int, str] | None:
        now = self.now()
        sent = self.sent.setdefault((kind, token), deque())
        while sent and sent[0] <= now - 60:
            sent.popleft()
        if kind == "dingtalk":
            if self.throttled_until.get((kind, token), 0) > now:
                return 130101, "send too fast, exceed 20 times per minute"
            if len(sent) >= 20:
                self.throttled_until[(kind, token)] = now + DINGTALK_THROTTLE_S
                return 130101, "send too fast, exceed 20 times per minute"
        elif kind == "wecom" and len(sent) >= 20:
            return 45009, "api freq out of limit"
        elif kind == "feishu" and (len(sent) >= 100 or sum(1 for t in sent if t > now - 1) >= 5):
            return 11232, "frequency limited"
        return None

    # --- control ---------------------------------------------------------------------------------------------

    def register(self, kind: str, signed: bool = True) -> dict:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        token = secrets.token_hex(16) if kind != "wecom" else _uuid()
        secret = ("SEC" + secrets.token_hex(24) if kind == "dingtalk" else secrets.token_urlsafe(16)) \
            if signed and kind != "wecom" else None
        with self.lock:
            self.robots[(kind, token)] = {"secret": secret}
        paths = {"dingtalk": f"/robot/send?access_token={token}", "wecom": f"/cgi-bin/webhook/send?key={token}",
                 "feishu": f"/open-apis/bot/v2/hook/{token}"}
        return {"kind": kind, "token": token, "secret": secret, "webhook": self.base_url + paths[kind]}

    def control(self, request: Request, name: str) -> Response:
        payload = request.get_json(silent=True) or {}
        with self.lock:
            if name == "robots" and request.method == "POST":
                try:
                    return _json(self.register(payload.get("kind"), bool(payload.get("signed", True))))
                except ValueError as exc:
                    return _json({"error": str(exc)}, 400)
            if name == "messages":
                kind = request.args.get("kind")
                return _json([m for m in self.messages if not kind or m["kind"] == kind])
            if name == "requests":
                return _json(list(self.requests))
            if name == "behaviour" and request.method == "POST":
                unknown = set(payload) - set(DEFAULT_BEHAVIOUR)
                if unknown:
                    return _json({"error": f"unknown behaviour {sorted(unknown)}"}, 400)
                self.behaviour.update(payload)
                self.failures = 0
                return _json(self.behaviour)
            if name == "reset" and request.method == "POST":
                self._reset()
                return _json({"ok": True})
        return _json({"error": "not found"}, 404)


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())

