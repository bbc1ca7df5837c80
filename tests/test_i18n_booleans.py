"""FAB's own list and show screens print a boolean column as 是/否 (Yes/No after /lang/en), never True/False."""
from __future__ import annotations

import re

from tests.test_i18n import admin, get, switch  # noqa: F401  (fixture and helpers)


def _row_cells(page: str, name: str) -> list[str]:
    """The text of each cell of the list row that holds `name`."""
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", page, re.S) if name in r)
    return [re.sub(r"<[^>]+>|\s+", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_a_boolean_column_reads_yes_or_no_in_each_language(admin, client, f):  # noqa: F811
    tier = f.tier(name=f.unique("布尔等级"), may_recruit=True, may_withdraw=False)

    cells = _row_cells(get(client, "/tiers/list/"), tier.name)
    assert "是" in cells and "否" in cells, cells
    assert "True" not in cells and "False" not in cells, cells
    show = get(client, f"/tiers/show/{tier.id}")
    assert "True" not in re.sub(r"<script.*?</script>", "", show, flags=re.S)

    switch(client, "en")
    cells = _row_cells(get(client, "/tiers/list/"), tier.name)
    assert "Yes" in cells and "No" in cells, cells
    assert "是" not in cells and "否" not in cells, cells
