"""A local Aliyun SMS (Dysmsapi 2017-05-25, RPC style) for the demo and the tests: plain WSGI, thread-safe.
`flask kameng sms-sim --port P` serves it; the protocol and its sources are in app/notices/sms.py.

Endpoint `/` (GET, or POST form): checks, in this order, answering JSON {"RequestId", "Code", "Message"} (HTTP 400
for the request's own faults, 404 for an unknown key, 200 for business answers): required parameters
(MissingParameter), Action=SendSms (InvalidAction), Version 2017-05-25, Format JSON, SignatureMethod HMAC-SHA1,
SignatureVersion 1.0, Timestamp "yyyy-MM-ddTHH:mm:ssZ" within 15 minutes of now (InvalidTimeStamp.Expired; the
window is our assumption), AccessKeyId registered (InvalidAccessKeyId.NotFound), the signature
(SignatureDoesNotMatch), SignatureNonce not seen before (SignatureNonceUsed); then the business checks answered
with HTTP 200: PhoneNumbers mainland mobiles (isv.MOBILE_NUMBER_ILLEGAL), SignName registered
(isv.SMS_SIGNATURE_ILLEGAL), TemplateCode registered (isv.SMS_TEMPLATE_ILLEGAL), TemplateParam a JSON object of
strings (isv.INVALID_JSON_PARAM), no URL in a variable (isv.PARAM_NOT_SUPPORT_URL), every ${var} of the template
given (isv.TEMPLATE_MISSING_PARAMETERS). Accepted: {"Code": "OK", "Message": "OK", "BizId", "RequestId"}, and the
message, the template with its variables filled in, is recorded.

Control API (JSON, unsigned; tests and demos only): `GET /_sim/keys` {"access_key_id", "access_key_secret",
"sign_name", "template_code", "template"}; `POST /_sim/template` {"code", "content"} registers a template;
`GET /_sim/messages` [{"phone", "sign_name", "template_code", "params", "content", "biz_id", "out_id"}];
`GET /_sim/requests` how many SendSms calls arrived (accepted or not); `POST /_sim/behaviour` {"fail": null |
an error code (e.g. "isp.SYSTEM_ERROR", "isv.BUSINESS_LIMIT_CONTROL"), "fail_times": n (then OK again; 0 = for
ever), "http_status": 200 | 500 | 503}; `POST /_sim/reset` forgets messages and behaviour.
"""
# i18n-keep-file: a simulator of Aliyun SMS: its answers, sign name and templates are that service's own text
from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from datetime import UTC, datetime, timedelta

from werkzeug.wrappers import Request, Response

from app.notices.sms import VERSION, signature

TIMESTAMP_WINDOW = timedelta(minutes=15)
MOBILE = re.compile(r"^1[3-9]\d{9}$")
URL_LIKE = re.compile(r"(https?://|www\.|\b[a-z0-9-]+\.(com|cn|net|org|top|xyz|io)\b)", re.I)
VARIABLE = re.compile(r"\$\{(\w+)\}")
REQUIRED = ("AccessKeyId", "Action", "Format", "PhoneNumbers", "SignName", "SignatureMethod", "SignatureNonce",
            "SignatureVersion", "TemplateCode", "Timestamp", "Version", "Signature")
DEFAULT_BEHAVIOUR = {"fail": None, "fail_times": 0, "http_status": 200}


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")


class SmsError(Exception):
    def __init__(self, code: str, message: str, status: int = 200):
        super().__init__(code)
        self.code, self.message, self.status = code, message, status


class AliyunSmsSimulator:
    def __init__(self, sign_name: str = "卡盟商城"):
        self.lock = threading.RLock()
        self.access_key_id = "LTAI" + secrets.token_hex(8)
        self.access_key_secret = secrets.token_urlsafe(24)
        self.sign_name = sign_name
        self.templates = {"SMS_100000001": "您的订单${order_no}已发货，请凭查询密码到订单查询页查看。"}
        self._reset()

    def _reset(self) -> None:
        with self.lock:
            self.messages: list[dict] = []
            self.nonces: set[str] = set()
            self.requests = 0
            self.behaviour = dict(DEFAULT_BEHAVIOUR)

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.route(request)
        except Exception as exc:  # pragma: no cover - a bug in the simulator: say so
            response = _json({"error": f"simulator error: {type(exc).__name__}: {exc}"}, 500)
        return response(environ, start_response)

    def route(self, request: Request) -> Response:
        path = request.path
        if path == "/":
            return self.send_sms({**request.args.to_dict(), **request.form.to_dict()})
        if path == "/_sim/keys" and request.method == "GET":
            with self.lock:
                code = next(iter(self.templates))
                return _json({"access_key_id": self.access_key_id, "access_key_secret": self.access_key_secret,
                              "sign_name": self.sign_name, "template_code": code, "template": self.templates[code]})
        if path == "/_sim/template" and request.method == "POST":
            payload = request.get_json(silent=True) or {}
            if not isinstance(payload.get("code"), str) or not isinstance(payload.get("content"), str):
                return _json({"error": "code and content are required"}, 400)
            with self.lock:
                self.templates = {payload["code"]: payload["content"], **self.templates}
            return _json({"code": payload["code"]})
        if path == "/_sim/messages" and request.method == "GET":
            with self.lock:
                return _json(list(self.messages))
        if path == "/_sim/requests" and request.method == "GET":
            with self.lock:
                return _json({"requests": self.requests})
        if path == "/_sim/behaviour" and request.method == "POST":
            payload = request.get_json(silent=True) or {}
            unknown = set(payload) - set(DEFAULT_BEHAVIOUR)
            if unknown:
                return _json({"error": f"unknown behaviour {sorted(unknown)}"}, 400)
            with self.lock:
                self.behaviour.update(payload)
                return _json(dict(self.behaviour))
        if path == "/_sim/reset" and request.method == "POST":
            self._reset()
            return _json({"reset": True})
        return _json({"error": "not found"}, 404)

    # --- SendSms ---------------------------------------------------------------------------------------------

    def send_sms(self, params: dict) -> Response:
        request_id = str(uuid.uuid4()).upper()
        with self.lock:
            self.requests += 1
        try:
            self._check_request(params)
            phones, template, values = self._check_business(params)
            with self.lock:
                fail, status = self.behaviour["fail"], int(self.behaviour["http_status"] or 200)
                if fail:
                    if self.behaviour["fail_times"] > 0:
                        self.behaviour["fail_times"] -= 1
                        if self.behaviour["fail_times"] == 0:
                            self.behaviour["fail"] = None
                    raise SmsError(str(fail), "simulated failure", status)
                biz_id = f"{secrets.randbelow(10 ** 15):015d}^0"
                content = f"【{params['SignName']}】" + VARIABLE.sub(lambda m: values[m.group(1)], template)
                for phone in phones:
                    self.messages.append({"phone": phone, "sign_name": params["SignName"],
                                          "template_code": params["TemplateCode"], "params": values,
                                          "content": content, "biz_id": biz_id, "out_id": params.get("OutId", "")})
        except SmsError as error:
            return _json({"RequestId": request_id, "Code": error.code, "Message": error.message}, error.status)
        return _json({"RequestId": request_id, "Code": "OK", "Message": "OK", "BizId": biz_id})

    def _check_request(self, params: dict) -> None:
        missing = [name for name in REQUIRED if not params.get(name)]
        if missing:
            raise SmsError("MissingParameter", f"{missing[0]} is mandatory for this action.", 400)
        if params["Action"] != "SendSms":
            raise SmsError("InvalidAction.NotFound", "Specified api is not found.", 400)
        if params["Version"] != VERSION:
            raise SmsError("InvalidVersion", "Specified parameter Version is not valid.", 400)
        if params["Format"].upper() != "JSON" or params["SignatureMethod"] != "HMAC-SHA1" \
                or params["SignatureVersion"] != "1.0":
            raise SmsError("InvalidParameter", "Format, SignatureMethod or SignatureVersion is not valid.", 400)
        try:
            at = datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise SmsError("InvalidTimeStamp.Format", "Specified time stamp is not valid.", 400) from None
        if abs(datetime.now(UTC) - at) > TIMESTAMP_WINDOW:
            raise SmsError("InvalidTimeStamp.Expired", "Specified time stamp or date header is expired.", 400)
        with self.lock:
            if params["AccessKeyId"] != self.access_key_id:
                raise SmsError("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
            secret = self.access_key_secret
        unsigned = {k: v for k, v in params.items() if k != "Signature"}
        if not secrets.compare_digest(signature(unsigned, secret).encode(), params["Signature"].encode()):
            raise SmsError("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.", 400)
        with self.lock:
            if params["SignatureNonce"] in self.nonces:
                raise SmsError("SignatureNonceUsed", "Specified signature nonce was used already.", 400)
            self.nonces.add(params["SignatureNonce"])

    def _check_business(self, params: dict) -> tuple[list[str], str, dict]:
        phones = params["PhoneNumbers"].split(",")
        if not all(MOBILE.match(p) for p in phones):
            raise SmsError("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        with self.lock:
            if params["SignName"] != self.sign_name:
                raise SmsError("isv.SMS_SIGNATURE_ILLEGAL", "签名不合法")
            template = self.templates.get(params["TemplateCode"])
        if template is None:
            raise SmsError("isv.SMS_TEMPLATE_ILLEGAL", "模板不合法")
        try:
            values = json.loads(params.get("TemplateParam") or "{}")
        except ValueError:
            raise SmsError("isv.INVALID_JSON_PARAM", "JSON参数不合法") from None
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise SmsError("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        if any(URL_LIKE.search(v) for v in values.values()):
            raise SmsError("isv.PARAM_NOT_SUPPORT_URL", "不支持url为变量")
        needed = set(VARIABLE.findall(template))
        if needed - set(values):
            raise SmsError("isv.TEMPLATE_MISSING_PARAMETERS", "模板缺少变量")
        return phones, template, values


def sms_settings(url: str, lookup_base: str, code: str = "SMS_200000001") -> dict:
    """Register a delivery template whose text holds the storefront's lookup link (as a real template must:
    URLs cannot be variables) with the simulator at `url`; the 平台设置 values pointing at it."""
    from app import outbound

    link = f"{lookup_base.rstrip('/')}/shop/lookup?order_no=${{order_no}}"
    content = f"您的订单${{order_no}}已发货，请凭查询密码到 {link} 查看。"
    with outbound.session(allow_private=True) as session:  # a demo server calling its neighbour
        session.post(f"{url}/_sim/template", json={"code": code, "content": content}, timeout=10).raise_for_status()
        keys = session.get(f"{url}/_sim/keys", timeout=10)
        keys.raise_for_status()
    data = keys.json()
    return {"sms_enabled": True, "sms_endpoint": url.rstrip("/") + "/", "sms_access_key_id": data["access_key_id"],
            "sms_access_key_secret": data["access_key_secret"], "sms_sign_name": data["sign_name"],
            "sms_template_code": code}
