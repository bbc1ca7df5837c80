"""Shared pieces of every dashboard: the filter bar, KPI cards, exportable tables, chart styling, money display.

Component ids are fixed (one Dash app per dashboard, so they never clash): `f-preset`, `f-range`, `f-category`,
`f-tier`, `f-branch`, `f-granularity`, `f-init`. A dashboard's data callback takes `filter_inputs(...)` as keyword
inputs and turns them into `Filters.from_inputs(**values)`, which validates them and asks app.scope for the scope
(never trusting a scope from the browser). Labels go through gettext at request time (layouts are functions).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, timedelta

from dash import Dash, Input, Output, State, dash_table, dcc, html
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import select

from app.agents.models import Agent, Tier
from app.catalog.models import Category
from app.cells import safe_row
from app.clock import business_today
from app.errors import ValidationError
from app.extensions import db
from app.money import format_fen
from app.scope import DASHBOARD_STAFF_ROLES, dashboard_scope, downline_ids

FONT_FAMILY = '"Noto Sans CJK SC", "Noto Sans SC", "Microsoft YaHei", "PingFang SC", sans-serif'
PRESETS = [("7d", lazy_gettext("近7天")), ("30d", lazy_gettext("近30天")), ("month", lazy_gettext("本月")),
           ("year", lazy_gettext("近一年"))]
DEFAULT_PRESET = "30d"
# The granularity a preset switches to (the viewer can pick another after): a year in 365 daily bars is unreadable,
# and its tables would hold 365 rows per series.
PRESET_GRANULARITY = {"7d": "day", "30d": "day", "month": "day", "year": "month"}
GRANULARITIES = [("day", lazy_gettext("日")), ("week", lazy_gettext("周")), ("month", lazy_gettext("月"))]
MAX_RANGE_DAYS = 3 * 366  # longer ranges are refused (the rollups hold a few years at most)
BRANCH_OPTIONS_LIMIT = 30
MAX_INT = 2**31 - 1


def preset_range(preset: str | None, now: date | None = None) -> tuple[date, date]:
    """(start, end) inclusive for 近7天 / 近30天 / 本月 / 近一年, ending today."""
    end = now or business_today()
    if preset == "7d":
        return end - timedelta(days=6), end
    if preset == "month":
        return end.replace(day=1), end
    if preset == "year":
        return end - timedelta(days=364), end
    return end - timedelta(days=29), end


def _parse_day(value, default: date) -> date:
    if value in (None, ""):
        return default
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ValidationError(f"日期格式不正确: {value!r}") from None


def _parse_id(value, what: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{what}参数不正确") from None
    if not 0 < number <= MAX_INT:
        raise ValidationError(f"{what}参数不正确")
    return number


@dataclass(frozen=True)
class Filters:
    scope_id: int  # from app.scope.dashboard_scope, never from the browser
    start: date
    end: date  # inclusive
    category_id: int | None = None
    tier_id: int | None = None
    branch_id: int | None = None
    granularity: str = "day"

    @classmethod
    def from_inputs(cls, start=None, end=None, category=None, tier=None, branch=None, granularity=None) -> Filters:
        """Validate what the browser sent (bad input is a 4xx ValidationError) and resolve the viewer's scope."""
        default_start, default_end = preset_range(DEFAULT_PRESET)
        start_day, end_day = _parse_day(start, default_start), _parse_day(end, default_end)
        if start_day > end_day:
            start_day, end_day = end_day, start_day
        if (end_day - start_day).days >= MAX_RANGE_DAYS:
            raise ValidationError("日期范围过长（最多三年）")
        if granularity not in (None, "", "day", "week", "month"):
            raise ValidationError("时间粒度参数不正确")
        branch_id = _parse_id(branch, "代理分支")
        return cls(scope_id=dashboard_scope(branch_id), start=start_day, end=end_day,
                   category_id=_parse_id(category, "商品分类"), tier_id=_parse_id(tier, "代理等级"),
                   branch_id=branch_id, granularity=granularity or "day")

    def previous(self) -> Filters:
        """The period of equal length just before this one (for comparisons)."""
        days = (self.end - self.start).days + 1
        return Filters(self.scope_id, self.start - timedelta(days=days), self.start - timedelta(days=1),
                       self.category_id, self.tier_id, self.branch_id, self.granularity)


# ------------------------------------------------------------------------------------------------------ filter bar
def filter_bar(*, category: bool = True, tier: bool = True, branch: bool = True,
               granularity: bool = False) -> html.Div:
    """The filters row. Options (categories, tiers, branches) are loaded by register_filters' callbacks."""
    start, end = preset_range(DEFAULT_PRESET)
    items = [
        _field(_("时间"), dcc.RadioItems(
            id="f-preset", value=DEFAULT_PRESET, inline=True, className="kd-presets",
            options=[{"label": str(label), "value": key} for key, label in PRESETS])),
        _field(_("日期范围"), dcc.DatePickerRange(
            id="f-range", start_date=start.isoformat(), end_date=end.isoformat(), display_format="YYYY-MM-DD",
            first_day_of_week=1, minimum_nights=0, start_date_placeholder_text=_("开始日期"),
            end_date_placeholder_text=_("结束日期"))),
    ]
    if category:
        items.append(_field(_("商品分类"), dcc.Dropdown(id="f-category", options=[], placeholder=_("全部分类"),
                                                      className="kd-dropdown")))
    if tier:
        items.append(_field(_("代理等级"), dcc.Dropdown(id="f-tier", options=[], placeholder=_("全部等级"),
                                                      className="kd-dropdown")))
    if branch:
        items.append(_field(_("代理分支"), dcc.Dropdown(id="f-branch", options=[], placeholder=_("全部（我的范围）"),
                                                      searchable=True, className="kd-dropdown kd-branch")))
    if granularity:
        items.append(_field(_("时间粒度"), dcc.RadioItems(
            id="f-granularity", value="day", inline=True, className="kd-presets",
            options=[{"label": str(label), "value": key} for key, label in GRANULARITIES])))
    items.append(dcc.Store(id="f-init", data=0))
    return html.Div(items, className="kd-filters")


def _field(label: str, control) -> html.Div:
    return html.Div([html.Label(label, className="kd-label"), control], className="kd-field")


def filter_inputs(*, category: bool = True, tier: bool = True, branch: bool = True,
                  granularity: bool = False) -> dict:
    """Keyword inputs for a data callback, matching filter_bar(...) with the same flags."""
    inputs = {"start": Input("f-range", "start_date"), "end": Input("f-range", "end_date")}
    if category:
        inputs["category"] = Input("f-category", "value")
    if tier:
        inputs["tier"] = Input("f-tier", "value")
    if branch:
        inputs["branch"] = Input("f-branch", "value")
    if granularity:
        inputs["granularity"] = Input("f-granularity", "value")
    return inputs


def register_filters(dash_app: Dash, *, category: bool = True, tier: bool = True, branch: bool = True,
                     granularity: bool = False) -> None:
    """Callbacks of the filter bar: presets set the range (and the granularity, where there is one); options load
    on page load; branch search is scoped."""
    if granularity:
        @dash_app.callback(Output("f-range", "start_date"), Output("f-range", "end_date"),
                           Output("f-granularity", "value"), Input("f-preset", "value"))
        def apply_preset_and_granularity(preset):
            start, end = preset_range(preset)
            return start.isoformat(), end.isoformat(), PRESET_GRANULARITY.get(preset, "day")
    else:
        @dash_app.callback(Output("f-range", "start_date"), Output("f-range", "end_date"), Input("f-preset", "value"))
        def apply_preset(preset):
            start, end = preset_range(preset)
            return start.isoformat(), end.isoformat()

    if category:
        @dash_app.callback(Output("f-category", "options"), Input("f-init", "data"))
        def category_options(_init):
            dashboard_scope()  # only viewers of some scope get here at all
            return [{"label": name, "value": cid} for cid, name in
                    db.session.execute(select(Category.id, Category.name).order_by(Category.name))]

    if tier:
        @dash_app.callback(Output("f-tier", "options"), Input("f-init", "data"))
        def tier_options(_init):
            dashboard_scope()
            return [{"label": name, "value": tid} for tid, name in
                    db.session.execute(select(Tier.id, Tier.name).order_by(Tier.rank, Tier.name))]

    if branch:
        @dash_app.callback(Output("f-branch", "options"), Input("f-branch", "search_value"),
                           State("f-branch", "value"))
        def branch_choices(search, value):
            return branch_options(search, value)


def branch_options(search: str | None, value=None, limit: int = BRANCH_OPTIONS_LIMIT) -> list[dict]:
    """Agents whose branch the viewer may pick: staff any agent, an agent its own downline (app.scope)."""
    scope = dashboard_scope()  # refuses anyone without a scope
    query = select(Agent.id, Agent.name).order_by(Agent.name).limit(limit)
    if not _is_dashboard_staff():
        query = query.where(Agent.id.in_(downline_ids(db.session.get(Agent, scope))))
    if search:
        query = query.where(Agent.name.contains(str(search)[:64], autoescape=True))
    rows = list(db.session.execute(query))
    selected = _parse_id(value, "代理分支") if value not in (None, "") else None
    if selected is not None and selected not in {r[0] for r in rows}:
        dashboard_scope(selected)  # keep the current choice only when it is still in scope
        extra = db.session.execute(select(Agent.id, Agent.name).where(Agent.id == selected)).first()
        if extra is not None:
            rows.append(extra)
    return [{"label": name, "value": aid} for aid, name in rows]


def _is_dashboard_staff() -> bool:
    from flask import g

    user = getattr(g, "user", None)
    return bool(user) and any(role.name in DASHBOARD_STAFF_ROLES for role in user.roles)


# ----------------------------------------------------------------------------------------------------- KPI cards
def delta(current: int, previous: int | None) -> dict:
    """Change against the previous period: absolute and percent (None when the previous period was 0)."""
    if previous is None:
        return {"delta": None, "pct": None}
    change = current - previous
    pct = None if previous == 0 else round(change * 100 / previous, 1)
    return {"delta": change, "pct": pct}


def kpi_card(label: str, value: int, previous: int | None = None, money: bool = False, card_id: str | None = None,
             text: str | None = None) -> html.Div:
    """One KPI: the figure, and (with `previous`) its change vs the previous period, e.g. '+¥12.00 (+5.0%)'."""
    shown = text if text is not None else (fen(value) if money else f"{value:,}")
    children = [html.Div(label, className="kd-kpi-label"), html.Div(shown, className="kd-kpi-value")]
    if previous is not None:
        d = delta(value, previous)
        sign = "+" if d["delta"] >= 0 else "-"
        amount = fen(abs(d["delta"])) if money else f"{abs(d['delta']):,}"
        pct = "—" if d["pct"] is None else f"{d['pct']:+.1f}%"
        css = "kd-up" if d["delta"] > 0 else ("kd-down" if d["delta"] < 0 else "kd-flat")
        children.append(html.Div(f"{_('较上期')} {sign}{amount} ({pct})", className=f"kd-kpi-delta {css}"))
    return html.Div(children, className="kd-kpi", id=card_id or f"kpi-{label}")


def kpi_row(row_id: str) -> html.Div:
    """The container a callback fills with kpi_card(...)s."""
    return html.Div(id=row_id, className="kd-kpis")


# -------------------------------------------------------------------------------------------------------- tables
def table(table_id: str, columns: list[tuple[str, str]], title: str | None = None, page_size: int = 15) -> html.Div:
    """A DataTable with a 导出 CSV button (register_table_export wires it). columns: (field, zh_CN label)."""
    header = [html.H4(title, className="kd-table-title")] if title else []
    header.append(html.Button(_("导出 CSV"), id=f"{table_id}-export", n_clicks=0, className="kd-export"))
    return html.Div([
        html.Div(header, className="kd-table-head"),
        dash_table.DataTable(
            id=table_id, data=[], columns=[{"id": key, "name": label} for key, label in columns],
            page_size=page_size, style_as_list_view=True, cell_selectable=False,
            style_cell={"fontFamily": FONT_FAMILY, "fontSize": "13px", "padding": "6px 8px", "textAlign": "left"},
            style_header={"fontWeight": "bold", "backgroundColor": "#f5f5f5"}),
        dcc.Download(id=f"{table_id}-download"),
    ], className="kd-table")


def register_table_export(dash_app: Dash, table_id: str, filename: str) -> None:
    """导出 CSV: the rows the table holds (already scoped by the callback that filled it), UTF-8 with BOM for Excel."""

    @dash_app.callback(Output(f"{table_id}-download", "data"), Input(f"{table_id}-export", "n_clicks"),
                       State(table_id, "data"), State(table_id, "columns"), prevent_initial_call=True)
    def export(_clicks, data, columns):
        dashboard_scope()
        return {"content": rows_to_csv(data or [], columns or []), "filename": filename, "type": "text/csv",
                "base64": False}


def rows_to_csv(rows: list[dict], columns: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(safe_row(c.get("name", c["id"]) for c in columns))
    for row in rows:
        writer.writerow(safe_row(row.get(c["id"], "") for c in columns))
    return "\ufeff" + out.getvalue()


# --------------------------------------------------------------------------------------------------------- charts
def fen(amount: int | None) -> str:
    """Money for display: fen -> '¥1,234.56' (app.money.format_fen)."""
    return format_fen(int(amount or 0))


def yuan(amount: int | None) -> float:
    """Chart axis value only (plotly needs a number); figures and tables show fen() strings."""
    return int(amount or 0) / 100


# plotly_white's look, as a plain template: plotly.graph_objects validates every property (about 20-70 ms a figure
# here, most of a callback's time), so figures are plain dicts in the shape plotly.js reads.
_TEMPLATE = {"layout": {
    "paper_bgcolor": "white", "plot_bgcolor": "white", "hovermode": "closest", "hoverlabel": {"align": "left"},
    "colorway": ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880", "#FF97FF",
                 "#FECB52"],
    "xaxis": {"gridcolor": "#EBF0F8", "linecolor": "#EBF0F8", "zerolinecolor": "#EBF0F8", "automargin": True},
    "yaxis": {"gridcolor": "#EBF0F8", "linecolor": "#EBF0F8", "zerolinecolor": "#EBF0F8", "automargin": True},
}}


def _merge(target: dict, updates: dict) -> dict:
    for key, value in updates.items():
        if isinstance(value, dict):  # merged into a copy: a figure never shares (and later changes) a caller's dict
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _merge(target[key], value)
        else:
            target[key] = value
    return target


class Figure(dict):
    """A plotly figure as a plain dict ({"data": [...], "layout": {...}}) with the plotly.graph_objects methods the
    dashboards use: add_bar / add_scatter / add_pie / add_heatmap / add_<any trace type>(**props), add_trace,
    update_layout, update_xaxes, update_yaxes. Property names are plotly.js's (no magic underscores)."""

    def __init__(self, data: list | None = None, layout: dict | None = None):
        super().__init__(data=list(data or []), layout=dict(layout or {}))

    def add_trace(self, trace: dict | None = None, **props) -> Figure:
        self["data"].append({**(trace or {}), **props})
        return self

    def __getattr__(self, name: str):
        if name.startswith("add_"):
            return lambda **props: self.add_trace(type=name[4:], **props)
        raise AttributeError(name)

    def update_layout(self, updates: dict | None = None, **props) -> Figure:
        _merge(self["layout"], {**(updates or {}), **props})
        return self

    def update_xaxes(self, **props) -> Figure:
        return self.update_layout(xaxis=props)

    def update_yaxes(self, **props) -> Figure:
        return self.update_layout(yaxis=props)


def figure(fig: Figure | None = None, title: str | None = None, height: int = 340) -> Figure:
    """A figure with the product's look: Chinese font, white template, compact margins, horizontal legend."""
    fig = fig if fig is not None else Figure()
    fig.update_layout(template=_TEMPLATE, font={"family": FONT_FAMILY, "size": 12}, height=height,
                      margin={"l": 50, "r": 20, "t": 40 if title else 20, "b": 40},
                      legend={"orientation": "h", "y": -0.2}, separators=".,")
    if title:
        fig.update_layout(title={"text": title})
    return fig


def period_label(day: date, granularity: str) -> str:
    """A period's name on axes and in tables: 2026-11-01 (a day), 2026-11-01 周 (the week starting then), 2026-11."""
    if granularity == "month":
        return day.strftime("%Y-%m")
    if granularity == "week":
        return _("%(day)s 周", day=day.isoformat())
    return day.isoformat()


def period_axis(fig: Figure) -> Figure:
    """The x axis shows period labels as written (2026-11-01, 2026-11), not re-read as dates, which plotly would
    label in English (Nov 1)."""
    # ISO labels sort by time; at most ~6 ticks, so 30 or 365 days stay legible on a half-width chart (every bar
    # is still drawn)
    fig.update_xaxes(type="category", categoryorder="category ascending", nticks=6, tickangle=0)
    return fig


def graph(graph_id: str) -> dcc.Graph:
    return dcc.Graph(id=graph_id, figure=figure(), config={"displaylogo": False, "displayModeBar": False},
                     className="kd-graph")


def empty_note(rows: list) -> str:
    return "" if rows else _("所选范围内暂无数据")


def page(title: str, *children) -> html.Div:
    return html.Div([html.H3(title, className="kd-title"), *children], className="kd-page")
