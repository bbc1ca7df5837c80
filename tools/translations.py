"""Build the English catalog: extract, collect FAB menu names and view labels at runtime, update, translate, compile.

    .venv/bin/python tools/translations.py          (or: make translations)

1. pybabel extract (babel.cfg; keywords _, lazy_gettext, gettext, ngettext) -> app/translations/messages.pot
2. create the app on an in-memory SQLite database and add every Chinese string FAB shows that is not in the source
   as a gettext call: menu names, labels and categories (FAB renders them through _() at render time), and the
   titles, label_columns, form titles and action texts of every registered view.
3. pybabel init (first time) or update -> app/translations/en/LC_MESSAGES/messages.po
4. fill every msgstr from tools/translations_en.py (msgid -> English; the dict is the source of truth, so
   re-running extraction keeps the translations), check placeholders, write the .po and compile the .mo.

Exits non-zero when a msgid has no English (listed on stderr) or a translation's placeholders do not match.
Strings that are plain str in a view (label_columns, titles) are listed as "not wrapped": FAB shows those as they
are, so their entry in the catalog is only ready for when the view wraps them in lazy_gettext.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a development tool: it starts the app on the built-in development keys, which only development accepts
os.environ.setdefault("KAMENG_ENV", "development")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from babel.messages.catalog import Catalog  # noqa: E402
from babel.messages.frontend import CommandLineInterface  # noqa: E402
from babel.messages.pofile import read_po, write_po  # noqa: E402

TRANSLATIONS_DIR = ROOT / "app" / "translations"
POT = TRANSLATIONS_DIR / "messages.pot"
LOCALE = "en"
PO = TRANSLATIONS_DIR / LOCALE / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")
KEYWORDS = ["_", "lazy_gettext", "gettext", "ngettext:1,2"]
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")  # Chinese ideographs
GETTEXT = {"_", "gettext", "lazy_gettext", "ngettext", "lazy_ngettext", "pgettext", "npgettext"}
TEMPLATE_GETTEXT = re.compile(r"""\b_\(\s*(?:"[^"]*"|'[^']*')""")
TEMPLATE_CJK_RUN = re.compile(r"[^<>{}\"'|]*" + CJK.pattern + r"[^<>{}\"'|]*")
KEEP_LINE = re.compile(r"i18n-keep:")  # this line's Chinese is on purpose (the reason follows)
KEEP_FILE = re.compile(r"^# i18n-keep-file:", re.M)
VIEW_TITLES = ("list_title", "show_title", "add_title", "edit_title", "form_title", "title")
# Code that stands in for an outside system (a payment gateway's cashier, a supplier's API, a bank, an identity
# provider): its Chinese imitates that system's own screens and answers, which a real one would not translate
# for us either. Only such stand-ins belong here; the unwrapped-text report skips them.
OUTSIDE_SYSTEM_STAND_INS = (
    "app/payments/simulators/",   # Alipay, WeChat Pay, UnionPay and 易支付 gateways and cashiers
    "app/suppliers/simulator.py",  # an upstream top-up supplier's API
    "app/network/simulators.py",   # the identity provider and the payout bank
)
# A statement marked with a comment `# i18n-keep: <why>` (at the end of one of its lines, or on a line of its own
# just above it) holds Chinese on purpose: data, not UI (text stored in the database as the record: journal memos,
# timelines, demo data), or an outside format's own words (the column names of a channel's statement we parse).
# It is written in Chinese whatever the reader's language; the report skips it.
DATA_MARKER = re.compile(r"#.*\bi18n-keep:")


def pybabel(*args: str) -> None:
    CommandLineInterface().run(["pybabel", "--quiet", *args])


def _msgid(value) -> tuple[str | None, bool]:
    """(the untranslated text, whether it is wrapped in a lazy gettext) of a label FAB holds."""
    if value is None:
        return None, False
    args = getattr(value, "_args", None)  # flask_babel.speaklater.LazyString keeps gettext's arguments
    if args and isinstance(args[0], str):
        return args[0], True
    return (value, False) if isinstance(value, str) else (None, False)


def collect_runtime() -> tuple[dict[str, set[str]], list[str]]:
    """Chinese strings FAB shows: {msgid: {where}}, and the ones held as plain str where FAB does not translate."""
    from app import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "FAB_CREATE_DB": False, "FAB_UPDATE_PERMS": False})
    found: dict[str, set[str]] = {}
    unwrapped: list[str] = []

    def add(value, where: str, translated_by_fab: bool) -> None:
        text, wrapped = _msgid(value)
        if not text or not CJK.search(text):
            return
        found.setdefault(text, set()).add(where)
        if not wrapped and not translated_by_fab:
            unwrapped.append(f"{where}: {text!r}")

    with app.app_context():
        appbuilder = app.appbuilder

        def walk(items, parent: str = "") -> None:
            for item in items or []:
                if not item or item.name == "-":
                    continue
                where = f"menu:{parent}/{item.name}" if parent else f"menu:{item.name}"
                add(item.name, where, True)  # navbar_menu.html renders {{ _(item.label) }}
                add(item.label, where, True)
                walk(item.childs, item.name)

        walk(appbuilder.menu.get_list())
        for view in appbuilder.baseviews:
            name = type(view).__name__
            for attr in VIEW_TITLES:
                add(getattr(view, attr, None), f"view:{name}.{attr}", False)
            for column, label in (getattr(view, "label_columns", None) or {}).items():
                add(label, f"view:{name}.label_columns[{column}]", False)
            for action_name, act in (getattr(view, "actions", None) or {}).items():
                add(act.text, f"view:{name}.action[{action_name}].text", False)
                add(act.confirmation, f"view:{name}.action[{action_name}].confirmation", False)
    return found, sorted(set(unwrapped))


def merge_runtime(found: dict[str, set[str]]) -> int:
    """Add runtime strings to messages.pot (locations as auto comments); returns how many were new."""
    with POT.open("rb") as fh:
        template = read_po(fh)
    added = 0
    for text, wheres in sorted(found.items()):
        message = template.get(text)
        if message is None:
            template.add(text, auto_comments=["runtime: " + ", ".join(sorted(wheres))])
            added += 1
    with POT.open("wb") as fh:
        write_po(fh, template, width=120)
    return added


def _is_docstring(node: ast.AST, parents: dict) -> bool:
    parent = parents.get(node)
    if not isinstance(parent, ast.Expr):
        return False
    owner = parents.get(parent)
    body = getattr(owner, "body", None)
    return isinstance(body, list) and bool(body) and body[0] is parent


def _data_lines(source: str, tree: ast.AST) -> set[int]:
    """Lines of the statements marked as data (DATA_MARKER); a compound statement's marker covers its header only."""
    lines = source.splitlines()
    marked = {n for n, line in enumerate(lines, 1) if DATA_MARKER.search(line)}
    if not marked:
        return set()
    covered: set[int] = set()
    for stmt in ast.walk(tree):
        if not isinstance(stmt, ast.stmt):
            continue
        body = getattr(stmt, "body", None)
        last = body[0].lineno - 1 if isinstance(body, list) and body and isinstance(body[0], ast.stmt) \
            else stmt.end_lineno
        span = set(range(stmt.lineno, last + 1))
        above = stmt.lineno - 1
        if span & marked or (above in marked and lines[above - 1].lstrip().startswith("#")):
            covered |= span
    return covered


def scan_unwrapped(menu_names: set[str]) -> list[str]:
    """Chinese text in app/ source and templates that no gettext call wraps (these stay Chinese in English).

    Menu and category names are left out: FAB renders them through _(), so their catalog entries translate them.
    So is text that is Chinese on purpose, marked where it stands: `# i18n-keep: <why>` at the end of its line or on
    a comment line just above it (in templates `{# i18n-keep: <why> #}` on the line) for a stored memo, an outside
    system's protocol text or a pattern that parses Chinese input, and `# i18n-keep-file: <why>` at the start of a
    line of a file for a whole simulator of a Chinese service or a file of stored demo data.
    """
    found: list[str] = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        if str(path.relative_to(ROOT)).startswith(OUTSIDE_SYSTEM_STAND_INS):
            continue
        source = path.read_text(encoding="utf-8")
        if KEEP_FILE.search(source):
            continue
        lines = source.splitlines()
        tree = ast.parse(source)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        data_lines = _data_lines(source, tree)
        wrapped: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in GETTEXT:
                wrapped.update(id(arg) for arg in node.args)
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{…}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if isinstance(parents.get(node), ast.JoinedStr) or _is_docstring(node, parents):
                    continue
                text = node.value
            else:
                continue
            if id(node) in wrapped or not CJK.search(text) or text in menu_names or node.lineno in data_lines:
                continue
            above = lines[node.lineno - 2] if node.lineno > 1 else ""
            if any(KEEP_LINE.search(line) for line in lines[node.lineno - 1:node.end_lineno]) or (
                    above.lstrip().startswith("#") and KEEP_LINE.search(above)):
                continue
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    for path in sorted((ROOT / "app" / "templates").rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        # comments out, line numbers kept (a comment may run over several lines)
        text = re.sub(r"\{#.*?#\}", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
        raw = path.read_text(encoding="utf-8").splitlines()
        for lineno, line in enumerate(text.splitlines(), 1):
            if lineno <= len(raw) and KEEP_LINE.search(raw[lineno - 1]):
                continue
            bare = TEMPLATE_GETTEXT.sub("", line)
            for run in TEMPLATE_CJK_RUN.findall(bare):
                found.append(f"{path.relative_to(ROOT)}:{lineno}: {run.strip()!r}")
    return found


def _placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"%\([^)]+\)[sdif]|%[sdif]|\{[^{}]*\}", text))


def apply_dictionary(catalog: Catalog) -> tuple[list[str], list[str], int]:
    """Fill msgstrs from the dictionary; returns (untranslated msgids, placeholder mismatches, translated count)."""
    from tools.translations_en import EN

    untranslated, mismatched, translated = [], [], 0
    for message in catalog:
        if not message.id:
            continue  # the header
        key = message.id
        english = EN.get(key)
        if english is None and isinstance(key, tuple):
            english = EN.get(key[0])
        if english is None:
            if message.string and (not isinstance(message.string, tuple) or all(message.string)):
                message.flags.discard("fuzzy")  # keep a hand-made translation, but say it is not in the dict
                untranslated.append(f"{key!r} (only in the .po, add it to tools/translations_en.py)")
            else:
                untranslated.append(repr(key))
            continue
        if isinstance(key, tuple):
            message.string = tuple(english) if isinstance(english, tuple) else (english, english)
            sources, targets = list(key), list(message.string)
        else:
            message.string = english
            sources, targets = [key], [english]
        message.flags.discard("fuzzy")
        for source, target in zip(sources, targets, strict=False):
            if _placeholders(source) != _placeholders(target):
                mismatched.append(f"{source!r} -> {target!r}")
        translated += 1
    return untranslated, mismatched, translated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unwrapped", action="store_true",
                        help="also list Chinese text in app/ that no gettext call wraps (it stays Chinese)")
    args = parser.parse_args(argv)
    TRANSLATIONS_DIR.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # locations in the catalog relative to the repository
    keywords = [arg for k in KEYWORDS for arg in ("-k", k)]
    pybabel("extract", "-F", "babel.cfg", *keywords, "--sort-by-file", "--width", "120",
            "--project", "Kameng", "--copyright-holder", "Kameng", "-o", str(POT.relative_to(ROOT)), ".")
    found, unwrapped = collect_runtime()
    added = merge_runtime(found)
    if PO.exists():
        pybabel("update", "-i", str(POT), "-d", str(TRANSLATIONS_DIR), "-l", LOCALE, "--no-fuzzy-matching",
                "--ignore-obsolete", "--width", "120")
    else:
        pybabel("init", "-i", str(POT), "-d", str(TRANSLATIONS_DIR), "-l", LOCALE, "--width", "120")

    with PO.open("rb") as fh:
        catalog = read_po(fh, locale=LOCALE)
    untranslated, mismatched, translated = apply_dictionary(catalog)
    problems = [f"{message.id!r}: {'; '.join(str(e) for e in errors)}" for message, errors in catalog.check()]
    with PO.open("wb") as fh:
        write_po(fh, catalog, width=120)
    pybabel("compile", "-d", str(TRANSLATIONS_DIR), "-l", LOCALE, "--statistics")

    total = sum(1 for m in catalog if m.id)
    print(f"{total} msgids ({added} only from runtime), {translated} translated from tools/translations_en.py")
    if unwrapped:
        print(f"\n{len(unwrapped)} labels FAB shows as plain str (not wrapped in lazy_gettext; the catalog has them, "
              "the view must wrap them):")
        for line in unwrapped:
            print("  " + line)
    menu_names = {text for text, wheres in found.items() if any(w.startswith("menu:") for w in wheres)}
    unwrapped_source = scan_unwrapped(menu_names)
    if args.unwrapped:
        print(f"\n{len(unwrapped_source)} Chinese strings in app/ not wrapped in a gettext call (they stay Chinese):")
        for line in unwrapped_source:
            print("  " + line)
    else:
        print(f"{len(unwrapped_source)} Chinese strings in app/ are not wrapped in a gettext call "
              "(--unwrapped lists them)")
    failed = False
    if untranslated:
        failed = True
        print(f"\n{len(untranslated)} msgids without English (add them to tools/translations_en.py):", file=sys.stderr)
        for line in untranslated:
            print("  " + line, file=sys.stderr)
    if mismatched or problems:
        failed = True
        print("\nplaceholders that differ between msgid and English:", file=sys.stderr)
        for line in mismatched + problems:
            print("  " + line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
