"""The SMS notice through Aliyun's SMS service (Dysmsapi, RPC style): the order number, and the lookup link that the
approved template carries. Never a card secret: SMS travels and is stored in clear at the carriers.

Protocol (sources: windsome/apis-aliyun src/dayu.js, which quotes help.aliyun.com/document_detail/56189 with a
captured request and answer; Zombie123456/learn_server nginx/test.py and xuqingkai/php aliyun/SendBatchSms.php,
working clients; error codes from alibabacloud.com/help/doc-detail/116206 and a copied 阿里大于 error table):
- GET {endpoint}?AccessKeyId&Action=SendSms&Format=JSON&PhoneNumbers&RegionId=cn-hangzhou&SignName
  &SignatureMethod=HMAC-SHA1&SignatureNonce=<unique>&SignatureVersion=1.0&TemplateCode&TemplateParam=<JSON>
  &Timestamp=<UTC yyyy-MM-ddTHH:mm:ssZ>&Version=2017-05-25[&OutId]&Signature=...
- Signature: percent-encode every name and value (RFC 3986: space %20, * %2A, ~ kept), sort by name, join `k=v`
  with `&`; StringToSign = "GET&%2F&" + percentEncode(that); Signature = base64(HMAC-SHA1(key = AccessKeySecret
  + "&", StringToSign)).
- Answer JSON {"Code": "OK", "Message": "OK", "RequestId", "BizId"}; anything but Code OK is a refusal:
  isv.MOBILE_NUMBER_ILLEGAL, isv.SMS_SIGNATURE_ILLEGAL, isv.SMS_TEMPLATE_ILLEGAL, isv.TEMPLATE_MISSING_PARAMETERS,
  isv.INVALID_JSON_PARAM (variables must be JSON strings), isv.PARAM_NOT_SUPPORT_URL (a URL cannot be a variable:
  "域名和ip请固化到模板申请中", so the lookup link is written into the template text when it is applied for, e.g.
  "您的订单${order_no}已发货，请凭查询密码到 https://shop.example.com/shop/lookup?order_no=${order_no} 查看"),
  isv.BUSINESS_LIMIT_CONTROL (rate limits), isp.SYSTEM_ERROR; signature and key problems answer HTTP 4xx with
  Code SignatureDoesNotMatch, InvalidAccessKeyId.NotFound, SignatureNonceUsed, InvalidTimeStamp.Expired. Which
  codes a retry can fix is our judgement: isp.*, BUSINESS_LIMIT_CONTROL and transport failures are retried, the
  rest are final. The timestamp window (15 minutes in the simulator) is unconfirmed.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

from flask_babel import gettext as _

from app import outbound
from app.notices.errors import DeliveryError

VERSION = "2017-05-25"
RETRYABLE = ("isp.", "isv.BUSINESS_LIMIT_CONTROL", "Throttling", "ServiceUnavailable", "InternalError")
TIMEOUT_SECONDS = 10


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Aliyun's RPC signature wants it (quote keeps only A-Z a-z 0-9 - _ . ~)."""
    return quote(str(value), safe="~")


def canonical_query(params: dict) -> str:
    return "&".join(f"{percent_encode(k)}={percent_encode(params[k])}" for k in sorted(params))


def signature(params: dict, secret: str, method: str = "GET") -> str:
    string_to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"
    digest = hmac.new((secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def settings() -> dict:
    from app.settings import service as platform

    return {name: platform.get(f"sms_{name}") for name in ("enabled", "endpoint", "access_key_id",
                                                           "access_key_secret", "sign_name", "template_code")}


def enabled() -> bool:
    s = settings()
    return bool(s["enabled"] and s["endpoint"] and s["access_key_id"] and s["access_key_secret"]
                and s["sign_name"] and s["template_code"])


def send(phone: str, order_no: str) -> str:
    """Send the delivery SMS; returns the provider's BizId. DeliveryError (temporary or final) otherwise."""
    s = settings()
    if not enabled():
        raise DeliveryError(_("短信通知未启用或未配置"), temporary=False)
    params = {"AccessKeyId": s["access_key_id"], "Action": "SendSms", "Format": "JSON", "PhoneNumbers": phone,
              "RegionId": "cn-hangzhou", "SignName": s["sign_name"], "SignatureMethod": "HMAC-SHA1",
              "SignatureNonce": uuid.uuid4().hex, "SignatureVersion": "1.0", "TemplateCode": s["template_code"],
              "TemplateParam": json.dumps({"order_no": order_no}, ensure_ascii=False, separators=(",", ":")),
              "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "Version": VERSION, "OutId": order_no}
    query = canonical_query(params) + "&Signature=" + percent_encode(signature(params, s["access_key_secret"]))
    endpoint = s["endpoint"] if s["endpoint"].endswith("/") else s["endpoint"] + "/"
    try:
        response = outbound.request("GET", f"{endpoint}?{query}", timeout=TIMEOUT_SECONDS, allow_redirects=False)
    except outbound.FAILURES as exc:
        raise DeliveryError(_("短信服务不可用（%(error)s）", error=type(exc).__name__)) from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DeliveryError(_("短信服务应答无法识别（HTTP %(status)s，不是 JSON）", status=response.status_code),
                            temporary=response.status_code >= 500)
    code = str(data.get("Code") or "")
    if response.status_code == 200 and code == "OK":
        return str(data.get("BizId") or "")
    message = " ".join(str(data.get("Message") or "").split())[:120]
    raise DeliveryError(_("短信发送失败（SendSms %(code)s：%(message)s）", code=code or response.status_code,
                          message=message),
                        temporary=response.status_code >= 500 or code.startswith(RETRYABLE))
