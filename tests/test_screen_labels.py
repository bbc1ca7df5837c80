"""What the screenshots showed: list screens must name related rows, never print a Python object's default repr."""
from __future__ import annotations

import re

import pytest

from tests.dashboards_helpers import login_as

OBJECT_REPR = re.compile(r"&lt;[\w.]+ object at 0x[0-9a-f]+&gt;|<[\w.]+ object at 0x[0-9a-f]+>")


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_card_stock_list_names_the_import_batch(app, db, f):
    product = f.product(name="网易一卡通 50元")
    f.stock(product, 2, prefix="NE50-TEST")
    client, _admin = login_as(app, f, role="Admin")

    page = client.get("/card-secrets/list/").get_data(as_text=True)

    assert "网易一卡通 50元" in page
    assert not OBJECT_REPR.search(page), OBJECT_REPR.search(page).group(0)
    from sqlalchemy import select

    from app.catalog.models import CardImport

    batch = db.session.scalar(select(CardImport).where(CardImport.product_id == product.id))
    assert f"#{batch.id} paste (" in page  # the batch column: id, source (no file name), day
