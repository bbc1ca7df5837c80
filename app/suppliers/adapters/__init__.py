"""The adapter registry: which adapter speaks a supplier's protocol, and the connection it uses.

    adapter = get_adapter(supplier)           # raises SupplierNotConnected for a supplier without a protocol
    result = adapter.submit(order_no, code, account, quantity)
"""
from __future__ import annotations

from flask import current_app, has_request_context, request
from flask_babel import gettext

from app import crypto
from app.catalog.models import Supplier
from app.errors import KamengError
from app.suppliers.adapters.base import Connection, SupplierAdapter
from app.suppliers.adapters.kameng import KamengAdapter
from app.suppliers.adapters.simulator import SimulatorAdapter

ADAPTERS: dict[str, type[SupplierAdapter]] = {
    SimulatorAdapter.protocol: SimulatorAdapter,
    KamengAdapter.protocol: KamengAdapter,
}


class SupplierNotConnected(KamengError):
    """The supplier has no (known) protocol, endpoint or credentials: nothing can be submitted to it."""
    code = "supplier_not_connected"
    status = 409


def notify_url_for(supplier_id: int, base_url: str | None = None) -> str | None:
    """Where the supplier should POST callbacks: PUBLIC_BASE_URL (as the payment channels use), else the current
    request's host. In a job without PUBLIC_BASE_URL there is no address to give: None (polling still works)."""
    base = base_url or current_app.config.get("PUBLIC_BASE_URL")
    if not base and has_request_context():
        base = request.host_url
    return f"{base.rstrip('/')}/supplier/notify/{supplier_id}" if base else None


def connection_for(supplier: Supplier, base_url: str | None = None) -> Connection:
    if supplier.protocol not in ADAPTERS:
        raise SupplierNotConnected(
            gettext(
                "供应商 %(name)s 的对接协议未知: %(protocol)s", name=supplier.name, protocol=repr(supplier.protocol)
            )
        )
    if not supplier.endpoint or not supplier.app_key or not supplier.secret_enc:
        raise SupplierNotConnected(gettext("供应商 %(name)s 缺少接口地址或密钥", name=supplier.name))
    try:
        secret = crypto.decrypt(supplier.secret_enc)
    except ValueError:
        raise SupplierNotConnected(gettext("供应商 %(name)s 的密钥无法解密", name=supplier.name)) from None
    return Connection(supplier_id=supplier.id, protocol=supplier.protocol, endpoint=supplier.endpoint.rstrip("/"),
                      app_key=supplier.app_key, secret=secret, timeout=float(supplier.timeout_seconds or 10),
                      notify_url=notify_url_for(supplier.id, base_url))


def get_adapter(supplier: Supplier, base_url: str | None = None) -> SupplierAdapter:
    connection = connection_for(supplier, base_url)
    return ADAPTERS[connection.protocol](connection)
