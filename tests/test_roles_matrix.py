"""The role matrix: what FAB registered and what each role is actually granted agree with app/roles.py SCREENS.

Every (view, permission) FAB wrote to ab_permission_view at start-up (FAB_UPDATE_PERMS) must be declared in the table
for every role, allowed or explicitly NOBODY, and FAB's own access check must answer exactly as declared: a new
screen, action or menu entry fails here until it is added to the table. Manager holds read permissions only;
Finance approves a withdrawal and refunds through the pages while Manager and Support are refused.
"""
from __future__ import annotations

import pytest
from flask_appbuilder.security.sqla.models import Permission, PermissionView, ViewMenu
from sqlalchemy import select

from app import roles
from app.audit.models import AuditEntry
from app.extensions import db as _db
from app.ledger.service import agent_balances
from app.network import withdrawals
from app.network.models import Withdrawal
from tests.network_helpers import idv_provider, payout_bank, verify


def registered_pairs(app) -> set[tuple[str, str]]:
    """(view, permission) rows FAB registered, without the built-in roles' patterns (names starting with ^)."""
    rows = _db.session.execute(select(ViewMenu.name, Permission.name)
                               .join(PermissionView, PermissionView.view_menu_id == ViewMenu.id)
                               .join(Permission, PermissionView.permission_id == Permission.id))
    return {(view, perm) for view, perm in rows if not view.startswith("^") and not perm.startswith("^")}


def code_pairs(app) -> set[tuple[str, str]]:
    """What the registered views and menu entries ask for, read from the code (a check on the table read above)."""
    ab = app.appbuilder
    pairs = {(v.class_permission_name, p) for v in ab.baseviews for p in (v.base_permissions or [])}

    def menu(items):
        for item in items:
            yield item.name
            yield from menu(item.childs or [])
    pairs |= {(name, "menu_access") for name in menu(ab.menu.get_list()) if name != "-"}
    return pairs


def actual_grants(app, user, pairs) -> set[tuple[str, str]]:
    """Every registered pair FAB's own access check (the one @has_access and the menu use) grants this user."""
    sm = app.appbuilder.sm
    return {(view, perm) for view, perm in pairs if sm._has_view_access(user, perm, view)}


def matrix_problems(registered: set, actual: dict[str, set], screens: dict) -> list[str]:
    """Differences between FAB and the declared table, one line each (empty when they agree)."""
    problems = []
    declared = {(view, perm) for view, perms in screens.items() for perm in perms}
    for view, perm in sorted(registered - declared):
        problems.append(f"not in app/roles.py SCREENS (grant it or write NOBODY): {view} {perm}")
    for view, perm in sorted(declared - registered):
        problems.append(f"declared but FAB registered no such permission: {view} {perm}")
    for view, perms in screens.items():
        for perm, who in perms.items():
            unknown = set(who) - set(roles.ROLE_NAMES)
            if unknown:
                problems.append(f"unknown role(s) {sorted(unknown)} on {view} {perm}")
    for role, pairs in actual.items():
        expected = roles.granted(role, screens) & registered
        for view, perm in sorted(pairs - expected):
            problems.append(f"{role} is granted {view} {perm} but the table does not allow it")
        for view, perm in sorted(expected - pairs):
            problems.append(f"{role} is refused {view} {perm} although the table allows it")
    return problems


@pytest.fixture
def users(app, f):
    made = {role: f.user(f.unique(role.lower()), role=role) for role in (*roles.ROLE_NAMES, "Admin")}
    made["Public"] = app.appbuilder.sm.find_role("Public")
    return made


def test_the_app_uses_the_generated_roles_and_registered_its_permissions(app):
    assert app.appbuilder.update_perms, "FAB_UPDATE_PERMS must be on for this test to read what FAB registers"
    assert app.config["FAB_ROLES"] is roles.ROLES
    assert set(roles.ROLES) == set(roles.ROLE_NAMES)
    registered = registered_pairs(app)
    assert len(registered) > 200
    missing = code_pairs(app) - registered
    assert not missing, f"views and menus of the code that FAB did not register: {sorted(missing)}"


def test_every_registered_permission_is_declared_and_granted_exactly_as_declared(app, users):
    registered = registered_pairs(app)
    actual = {role: actual_grants(app, users[role], registered) for role in roles.ROLE_NAMES}
    problems = matrix_problems(registered, actual, roles.SCREENS)
    assert not problems, "\n".join(problems)
    # Admin holds everything; the anonymous (Public) role nothing
    assert actual_grants(app, users["Admin"], registered) == registered
    sm = app.appbuilder.sm
    assert not [pair for pair in registered if sm._has_access_builtin_roles(users["Public"], pair[1], pair[0])
                or sm.exist_permission_on_roles(pair[0], pair[1], [users["Public"].id])]


def test_the_check_reports_an_unreviewed_screen_a_wider_grant_and_a_stale_entry(app, users):
    registered = registered_pairs(app)
    actual = {role: actual_grants(app, users[role], registered) for role in roles.ROLE_NAMES}
    # a new screen FAB registers that nobody put in the table, and a role that ended up with more than declared
    wider = {**actual, "Manager": actual["Manager"] | {("NewRefundToolView", "can_refund")}}
    problems = matrix_problems(registered | {("NewRefundToolView", "can_refund")}, wider, roles.SCREENS)
    assert any("not in app/roles.py SCREENS" in p and "NewRefundToolView can_refund" in p for p in problems)
    assert any("Manager is granted NewRefundToolView can_refund" in p for p in problems)
    # a grant taken back in FAB but still declared, and a table row for a screen that is gone
    narrower = {**actual, "Finance": actual["Finance"] - {("WithdrawalQueueView", "can_approve")}}
    screens = {**roles.SCREENS, "GoneView": {"can_list": (roles.M,)}}
    problems = matrix_problems(registered, narrower, screens)
    assert "Finance is refused WithdrawalQueueView can_approve although the table allows it" in problems
    assert "declared but FAB registered no such permission: GoneView can_list" in problems


def test_the_generated_patterns_are_exact(app, users):
    """A pattern written for one view never matches another whose name merely starts the same way."""
    sm = app.appbuilder.sm
    manager = users["Manager"]
    assert sm._has_view_access(manager, "can_list", "OrderView")
    for view, perm in (("OrderViewX", "can_list"), ("XOrderView", "can_list"), ("OrderView", "can_list_all"),
                       ("WithdrawalQueueView", "can_approve"), ("RefundView", "retry")):
        assert not sm._has_view_access(manager, perm, view), (view, perm)


def test_manager_holds_read_permissions_only(app, users):
    granted = actual_grants(app, users["Manager"], registered_pairs(app))
    changes = sorted(pair for pair in granted
                     if pair[1] not in roles.READ_ONLY_PERMISSIONS and pair not in roles.SELF_SERVICE)
    assert not changes, f"Manager may change something: {changes}"
    # and reads what it should: every queue's index page, the money and risk screens, every dashboard
    for pair in (("WithdrawalQueueView", "can_index"), ("DisputeQueueView", "can_index"),
                 ("RiskReviewView", "can_index"), ("JournalView", "can_list"), ("AuditView", "can_export"),
                 ("PaymentChannelView", "can_index"), ("MoneyFlowDashboardView", "can_show"),
                 ("RiskDashboardView", "can_show")):
        assert pair in granted, pair


def test_finance_and_support_split_refunds_and_disputes(app, users):
    finance = actual_grants(app, users["Finance"], registered_pairs(app))
    support = actual_grants(app, users["Support"], registered_pairs(app))
    for pair in (("WithdrawalQueueView", "can_approve"), ("WithdrawalQueueView", "can_reject"),
                 ("WithdrawalQueueView", "can_retry"), ("RefundFormView", "can_form"), ("RefundView", "retry"),
                 ("RefundView", "confirm_paid"), ("RealNameAdminView", "can_show"), ("PostingView", "can_list"),
                 ("ReconciliationView", "can_index"), ("MoneyFlowDashboardView", "can_show")):
        assert pair in finance and pair not in support, pair
    assert ("DisputeQueueView", "can_resolve") in support and ("DisputeQueueView", "can_resolve") not in finance
    assert ("RiskReviewView", "can_approve") in support and ("RiskReviewView", "can_approve") not in finance
    # Finance changes nothing outside money approvals: no catalog, agent, settings or risk change
    assert not [pair for pair in finance if pair[0] in ("ProductView", "AgentView", "TierView", "WalletAdjustView",
                                                         "PlatformSettingsView", "RiskListView", "ManualConfirmView")]


# ------------------------------------------------------------------------------------------ through the pages

@pytest.fixture
def pending_withdrawal(app, f, monkeypatch, redis_url):
    monkeypatch.setitem(app.config, "REDIS_URL", redis_url)
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    agent = f.agent(tier_obj=f.tier(min_withdrawal=10000, withdrawal_fee_bp=100), balance=100000)
    with idv_provider(app, monkeypatch):
        verify(agent)
    return withdrawals.request_withdrawal(agent.id, 50000)


def _status(withdrawal_id: int) -> str:
    _db.session.rollback()
    return _db.session.get(Withdrawal, withdrawal_id).status


def test_finance_approves_a_withdrawal_through_the_page_and_manager_is_refused(app, f, monkeypatch,
                                                                                 pending_withdrawal):
    from workers.runner import run_worker

    w = pending_withdrawal
    manager = f.login(app.test_client(), f.user(f.unique("mgr"), role="Manager").username)
    queue = manager.get("/withdrawal-review/")
    assert queue.status_code == 200 and w.withdrawal_no in queue.text
    assert "/approve" not in queue.text  # no button it could not use
    for action, data in (("approve", {}), ("reject", {"reason": "x"}), ("retry", {})):
        assert manager.post(f"/withdrawal-review/{w.id}/{action}", data=data).status_code == 403, action
    support = f.login(app.test_client(), f.user(f.unique("kf"), role="Support").username)
    assert support.get("/withdrawal-review/").status_code == 403
    assert support.post(f"/withdrawal-review/{w.id}/approve").status_code == 403
    assert _status(w.id) == "pending_review"
    assert not _db.session.scalar(select(AuditEntry).where(AuditEntry.action == "withdrawal.approve"))

    cashier = f.user(f.unique("fin"), role="Finance")
    finance = f.login(app.test_client(), cashier.username)
    assert f"/withdrawal-review/{w.id}/approve" in finance.get("/withdrawal-review/").text
    with payout_bank(app, monkeypatch):
        r = finance.post(f"/withdrawal-review/{w.id}/approve")
        assert r.status_code == 302
        run_worker(["default"], burst=True, with_cron=False)
    assert _status(w.id) == "paid"
    entry = _db.session.scalar(select(AuditEntry).where(AuditEntry.action == "withdrawal.approve"))
    assert entry.actor_id == cashier.id
    assert agent_balances(w.agent_id) == {"wallet": 50000, "pending": 0, "frozen": 0}
    # Finance's menu: money screens, not the catalog or the risk lists
    home = finance.get("/").text
    for link in ('href="/withdrawal-review/"', 'href="/refunds/list/"', 'href="/ledger/journals/list/"',
                 'href="/audit/list/"', 'href="/realname-records/list/"'):
        assert link in home, link
    for link in ('href="/products/list/"', 'href="/risk-lists/list/"', 'href="/disputes/"',
                 'href="/wallet-adjust/form"'):
        assert link not in home, link


def test_manager_reads_the_payment_channels_without_the_edit_button(app, f):
    manager = f.login(app.test_client(), f.user(f.unique("mgr"), role="Manager").username)
    page = manager.get("/payment-channels/")
    assert page.status_code == 200 and 'id="payment-channels"' in page.text
    assert 'href="/payment-channels/sandbox"' not in page.text
    assert manager.get("/payment-channels/sandbox").status_code == 403
    admin = f.login(app.test_client(), f.user(f.unique("admin"), role="Admin").username)
    assert 'href="/payment-channels/sandbox"' in admin.get("/payment-channels/").text


def test_the_demo_has_a_finance_login(app):
    from app.demo import load_demo

    logins = {username: role for username, _password, role in load_demo("demo-pass-1")}
    assert logins["finance"] == "Finance" and logins["manager"] == "Manager" and logins["support"] == "Support"
    user = app.appbuilder.sm.find_user(username="finance")
    assert [r.name for r in user.roles] == ["Finance"]
