"""Money flows dashboard (资金流向): commissions accrued / settled / reversed, withdrawals requested / paid / fees,
platform revenue, supplier fees, supplier cost and refunds, per day / week / month, against the previous period.

One callback; the scope comes from app.scope.dashboard_scope (Filters.from_inputs) on every call: for an agent,
only the flows written under its branch's scope id. Queries: dashboards/queries/money.py over rollup_money_daily.
The rollup has no category or tier, so neither filter is offered.
"""
from __future__ import annotations

from dash import Dash, Output, html
from flask_babel import gettext as _

from dashboards import components as c
from dashboards.queries import money as q

FILTERS = {"category": False, "tier": False, "branch": True, "granularity": True}
PERIOD_TABLE = "mf-periods"
TOTALS_TABLE = "mf-totals"
# Charts: which flows are drawn together.
GROUPS = {
    "mf-commissions": ("commission_accrued", "commission_settled", "commission_reversed", "shop_profit_accrued",
                       "shop_profit_reversed"),
    "mf-withdrawals": ("withdrawal_requested", "withdrawal_paid", "withdrawal_fee"),
    "mf-platform": ("revenue", "fees", "supplier_cost", "refunds"),
}


def flow_labels() -> dict[str, str]:
    return {
        "commission_accrued": _("佣金计提"), "commission_settled": _("佣金结算"), "commission_reversed": _("佣金冲回"),
        "withdrawal_requested": _("提现申请"), "withdrawal_paid": _("提现到账"), "withdrawal_fee": _("提现手续费"),
        "revenue": _("平台收入"), "fees": _("供应商服务费"), "supplier_cost": _("供应商成本"), "refunds": _("退款"),
        # agent shops (分站): settled shop profit is in 佣金结算 (one settlement moves both)
        "shop_profit_accrued": _("分站利润计提"), "shop_profit_reversed": _("分站利润冲回"),
    }


def group_titles() -> dict[str, str]:
    return {"mf-commissions": _("佣金与分站利润"), "mf-withdrawals": _("提现"),
            "mf-platform": _("平台收入、费用与退款")}


def layout() -> html.Div:
    labels = flow_labels()
    titles = group_titles()
    return c.page(
        _("资金流向"),
        c.filter_bar(**FILTERS),
        html.Div(id="mf-note", className="kd-note"),
        c.kpi_row("mf-kpis"),
        html.Div([html.Div(c.graph(gid), className="kd-col") for gid in ("mf-commissions", "mf-withdrawals")],
                 className="kd-row"),
        c.graph("mf-platform"),
        c.table(TOTALS_TABLE, [("flow", _("资金流向")), ("amount", _("金额")), ("count", _("笔数")),
                               ("previous", _("上期金额")), ("change", _("变化"))], title=_("合计")),
        c.table(PERIOD_TABLE, [("period", _("时间"))] + [(flow, labels[flow]) for flow in q.FLOWS],
                title=_("按时间明细")),
        html.Div([html.Span(titles[gid] + "：" + "、".join(labels[f] for f in flows) + "　")
                  for gid, flows in GROUPS.items()], className="kd-note"),
    )


def build(dash_app: Dash) -> None:
    dash_app.layout = layout
    c.register_filters(dash_app, category=False, tier=False, granularity=True)
    c.register_table_export(dash_app, TOTALS_TABLE, "money-flows-totals.csv")
    c.register_table_export(dash_app, PERIOD_TABLE, "money-flows.csv")

    outputs = [Output("mf-note", "children"), Output("mf-kpis", "children"),
               *[Output(gid, "figure") for gid in GROUPS], Output(TOTALS_TABLE, "data"), Output(PERIOD_TABLE, "data")]

    @dash_app.callback(*outputs, inputs=c.filter_inputs(**FILTERS))
    def update(**values):
        return render(c.Filters.from_inputs(**values))



def render(f: c.Filters) -> tuple:
    """Everything the page shows for one set of filters (the callback body; tests call it too)."""
    labels = flow_labels()
    prev = f.previous()
    rows = q.series(f.scope_id, f.start, f.end, f.granularity)
    current = {flow: {"amount": 0, "count": 0} for flow in q.FLOWS}  # the range's totals: the series summed
    for r in rows:
        current[r["flow"]]["amount"] += r["amount"]
        current[r["flow"]]["count"] += r["count"]
    previous = q.totals(f.scope_id, prev.start, prev.end)
    note = _("%(start)s 至 %(end)s，对比上期 %(pstart)s 至 %(pend)s", start=f.start.isoformat(),
             end=f.end.isoformat(), pstart=prev.start.isoformat(), pend=prev.end.isoformat())
    kpis = [c.kpi_card(labels[flow], current[flow]["amount"], previous[flow]["amount"], money=True,
                       card_id=f"kpi-{flow}") for flow in q.FLOWS]

    figures = []
    titles = group_titles()
    for gid, flows in GROUPS.items():
        fig = c.period_axis(c.figure(title=titles[gid]))
        for flow in flows:
            points = [r for r in rows if r["flow"] == flow]  # every period of the range (q.series fills zeros)
            fig.add_bar(x=[c.period_label(r["period"], f.granularity) for r in points],
                        y=[c.yuan(r["amount"]) for r in points], name=labels[flow],
                        customdata=[[c.fen(r["amount"]), r["count"]] for r in points],
                        hovertemplate="%{x}<br>%{customdata[0]} / %{customdata[1]}<extra></extra>")
        fig.update_layout(barmode="group")
        figures.append(fig)

    totals_rows = []
    for flow in q.FLOWS:
        now, before = current[flow]["amount"], previous[flow]["amount"]
        d = c.delta(now, before)
        change = "—" if d["pct"] is None else f"{d['pct']:+.1f}%"
        totals_rows.append({"flow": labels.get(flow, flow), "amount": c.fen(now), "count": current[flow]["count"],
                            "previous": c.fen(before), "change": change})
    by_period: dict = {}
    for r in rows:
        by_period.setdefault(r["period"], {"period": c.period_label(r["period"], f.granularity)})[r["flow"]] = \
            c.fen(r["amount"])
    period_rows = [by_period[p] for p in sorted(by_period)]
    return (note, kpis, *figures, totals_rows, period_rows)
