"""The shape of the code, read with ast: services never import workers (DESIGN.md: a service never imports a job),
so app/ and workers/ load in one direction only, and the import graph of app/ and workers/ has no circle at all.

The import graph counts every import statement, at module level and inside functions: a function-level import is
still a dependency, only a later one. A lower module calls back up only through a small registry the higher one
fills (app.outbox.service.handler, app.queueing.register_jobs, app.payments.service.register_other_payment), never
by an import the scan cannot see (importlib, __import__).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "workers")
# Only these exist to run and show workers: the CLI (`flask kameng worker`) and the jobs screen (任务队列).
MAY_IMPORT_WORKERS = ("app.cli", "app.jobs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours an imported name lands in (`app.orders.service.place` → app.orders.service)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, dict[str, int]]:
    """{module: {imported module: line of the first import}} over app/ and workers/ (ours only)."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the current package up
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                # `from app.orders import service` imports the submodule; `from app.x import f` the module x.
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved and resolved != name:
                    edges.setdefault(resolved, node.lineno)
        graph[name] = edges
    return graph


def _allowed_to_import_workers(module: str) -> bool:
    return any(module == allowed or module.startswith(allowed + ".") for allowed in MAY_IMPORT_WORKERS)


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is a few hundred modules deep at most)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def _cycle_through(graph: dict[str, dict[str, int]], component: list[str], start: str) -> list[str]:
    """One concrete cycle from start back to start inside a strongly connected component (breadth first)."""
    members = set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in graph[node]:
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component


def summary(graph: dict[str, dict[str, int]]) -> str:
    """Package-level edges (app.orders → app.payments ...) with counts: the picture for a reader, printed by -s."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[tuple[str, str], int] = {}
    for module, targets in graph.items():
        for target in targets:
            key = (package(module), package(target))
            if key[0] != key[1]:
                edges[key] = edges.get(key, 0) + 1
    workers_in = sorted({f"{a} → {b}" for (a, b) in edges if b.startswith("workers") and not a.startswith("workers")})
    workers_out = sorted({b for (a, b) in edges if a.startswith("workers") and not b.startswith("workers")})
    lines = [f"{len(graph)} modules, {sum(len(t) for t in graph.values())} import edges, "
             f"{len(edges)} package edges",
             "into workers/: " + (", ".join(workers_in) or "none"),
             "workers/ imports: " + ", ".join(workers_out)]
    lines += [f"import circle ({len(c)} modules): " + ", ".join(c) for c in _strongly_connected(graph)]
    return "\n".join(lines)


def test_no_module_under_app_imports_workers():
    graph = import_graph()
    offenders = [f"{graph_path(module)}:{line} imports {target}"
                 for module, targets in sorted(graph.items())
                 if module.startswith("app") and not _allowed_to_import_workers(module)
                 for target, line in sorted(targets.items()) if target.startswith("workers")]
    print("\n" + summary(graph))
    assert not offenders, "domain modules import workers/ (hand work over with app.queueing):\n" + "\n".join(offenders)


def _cycles(graph: dict[str, dict[str, int]]) -> list[str]:
    """One concrete circle per strongly connected component, each edge with the line of its import."""
    found = []
    for component in _strongly_connected(graph):
        # Start from workers/ when the circle goes through it (the first thing to read), else from its first module.
        start = next((m for m in component if m.startswith("workers")), component[0])
        path = _cycle_through(graph, component, start)
        steps = [f"{a} ({graph_path(a)}:{graph[a][b]})" for a, b in zip(path, path[1:], strict=False)]
        found.append(" → ".join([*steps, path[-1]]) + f"  ({len(component)} modules in the circle)")
    return found


def test_no_import_cycle():
    """app/ and workers/ load in layers: models, then services, then the views, jobs and CLI above them. A call back
    up goes through a registry the higher module fills (see the module docstring), not through an import."""
    cycles = _cycles(import_graph())
    assert not cycles, "import circles (move the shared part down, or register the call back up):\n" + "\n".join(cycles)


def test_the_cycle_check_names_a_circle():
    graph = {"app.a": {"app.b": 3}, "app.b": {"app.c": 7}, "app.c": {"app.a": 12}, "app.d": {"app.a": 1}}
    assert _strongly_connected(graph) == [["app.a", "app.b", "app.c"]]
    assert _cycle_through(graph, ["app.a", "app.b", "app.c"], "app.a") == ["app.a", "app.b", "app.c", "app.a"]


# Imports by a computed name hide a dependency from the graph above. The one allowed: the job registry, which imports
# the module named by the JOB_REGISTRY setting (workers.jobs) so that the names a service enqueues resolve to the job
# functions the worker registered (app.queueing.job_function).
DYNAMIC_IMPORTS_ALLOWED = {("app/queueing.py", "job_function")}
_DYNAMIC_IMPORTERS = {"import_module", "__import__", "import_string", "spec_from_file_location", "find_spec",
                      "module_from_spec", "reload"}


def _dynamic_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, function) of every import by a computed name: importlib.import_module, __import__, werkzeug's
    import_string, importlib.util's spec loaders, importlib.reload."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _DYNAMIC_IMPORTERS:
                found.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return found


def test_no_import_by_a_computed_name():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = str(path.relative_to(ROOT))
            for line, function in _dynamic_imports(ast.parse(path.read_text(encoding="utf-8"))):
                if (relative, function) not in DYNAMIC_IMPORTS_ALLOWED:
                    offenders.append(f"{relative}:{line} ({function})")
    assert not offenders, ("imports by a computed name (the import graph cannot see them; import the module, or "
                           "register the call back up):\n" + "\n".join(offenders))


def test_the_dynamic_import_scan_sees_each_kind():
    source = '''
import importlib
from importlib import import_module
def f(name):
    importlib.import_module("app.orders.service")
    import_module(name)
    __import__("app.payments.service")
    werkzeug.utils.import_string("app.risk.service:evaluate")
    importlib.util.spec_from_file_location("x", "app/x.py")
    importlib.reload(module)
    getattr(module, name)
'''
    assert [line for line, _ in _dynamic_imports(ast.parse(source))] == [5, 6, 7, 8, 9, 10]


def graph_path(module: str) -> str:
    path = _modules()[module]
    return str(path.relative_to(ROOT))


def test_every_job_name_a_service_enqueues_is_registered():
    """A name asked for under app/ (`enqueue("payout", ...)`) that no job registers would fail only at run time."""
    import workers.jobs  # noqa: F401  (registers the names)
    from app.queueing import JOBS

    asked = {}
    for module, path in _modules().items():
        if not module.startswith("app"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "enqueue"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                asked.setdefault(node.args[0].value, f"{path.relative_to(ROOT)}:{node.lineno}")
    assert asked, "no service enqueues by name: the scan is looking at the wrong calls"
    unknown = [f"{where} enqueues {name!r}" for name, where in sorted(asked.items()) if name not in JOBS]
    assert not unknown, "job names no job registers (workers/jobs.py register_jobs):\n" + "\n".join(unknown)


# --- status moves --------------------------------------------------------------------------------------------

# The one function that writes `status` (app/states.py); every entity's move goes through it.
STATUS_WRITERS = {("app/states.py", "move"), ("app/states.py", "move_all"),
                  # the statements of move / move_all, built once per shape
                  ("app/states.py", "_move_statement"), ("app/states.py", "_move_all_statement"),
                  # A reusable card secret's status is computed per row (CASE uses < max_uses) in the statement that
                  # counts its uses: its moves of CARD_SECRET_STATES (available <-> sold) happen in these three.
                  ("app/catalog/cards.py", "_allocate_uses"), ("app/catalog/cards.py", "_give_back_unrevealed_uses"),
                  ("app/catalog/service.py", "apply_max_uses")}
# Not our entities' lifecycles: an exception's HTTP status, a channel answer's HTTP status, and the simulators of
# outside systems (their in-memory state stands for the other side's database).
NOT_ENTITIES = ("app/errors.py", "app/payments/channels/", "app/payments/simulators/", "app/network/simulators.py",
                "app/notices/sms_simulator.py", "app/alerts/simulator.py", "app/suppliers/simulator.py")


def _root_call(node: ast.AST) -> str | None:
    """The innermost call of a chain: `update(t).where(...).values(...)` → update, `insert(t).values()` → insert."""
    name = None
    while isinstance(node, (ast.Call, ast.Attribute)):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                return node.func.id
            if isinstance(node.func, ast.Attribute):
                name = node.func.attr
            node = node.func.value if isinstance(node.func, ast.Attribute) else node.func
        else:
            node = node.value
    return name


def _is_status_key(key: ast.AST | None) -> bool:
    return ((isinstance(key, ast.Constant) and key.value == "status")
            or (isinstance(key, ast.Attribute) and key.attr == "status"))


def _status_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, function) of every write of a `status` column outside a row's creation."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
            # dicts spread into .values(**d) in this function: d = {"status": ...} is a write too
            spread = {kw.value.id for call in ast.walk(node) if isinstance(call, ast.Call)
                      for kw in call.keywords if kw.arg is None and isinstance(kw.value, ast.Name)
                      and isinstance(call.func, ast.Attribute) and call.func.attr == "values"}
            for sub in ast.walk(node):
                if (isinstance(sub, (ast.Assign, ast.AnnAssign)) and isinstance(sub.value, ast.Dict)
                        and any(_is_status_key(k) for k in sub.value.keys)):
                    targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                    if any(isinstance(t, ast.Name) and t.id in spread for t in targets):
                        found.append((sub.lineno, function))
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = list(node.targets) if isinstance(node, ast.Assign) else [node.target]
            while targets:
                target = targets.pop()
                if isinstance(target, (ast.Tuple, ast.List)):
                    targets += target.elts
                elif isinstance(target, ast.Attribute) and target.attr == "status":
                    found.append((node.lineno, function))
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in ("values", "update", "on_conflict_do_update"):
                dicts = [a for a in node.args if isinstance(a, ast.Dict)]
                dicts += [kw.value for kw in node.keywords if kw.arg == "set_" and isinstance(kw.value, ast.Dict)]
                writes = (any(kw.arg == "status" for kw in node.keywords)
                          or any(_is_status_key(k) for d in dicts for k in d.keys))
                creating = name == "values" and "insert" in (_root_call(node.func.value) or "")
                if writes and not creating:
                    found.append((node.lineno, function))
            elif name == "setattr" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value == "status":
                found.append((node.lineno, function))
            elif name == "text" and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) \
                    and re.search(r"(?is)\bupdate\b.+\bset\b.*\bstatus\s*=", node.args[0].value):
                found.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return sorted(set(found))


def test_only_the_state_machines_write_status():
    offenders = []
    for package in ("app", "workers", "dashboards"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = str(path.relative_to(ROOT))
            if relative.startswith(NOT_ENTITIES):
                continue
            for line, function in _status_writes(ast.parse(path.read_text(encoding="utf-8"))):
                if (relative, function) not in STATUS_WRITERS:
                    offenders.append(f"{relative}:{line} ({function})")
    assert not offenders, ("status written outside app/states.py (move a row with its entity's move function):\n"
                           + "\n".join(offenders))


def test_the_status_scan_sees_each_kind_of_write():
    source = '''
def f(w, t):
    w.status = "paid"
    w.status, w.at = "paid", 1
    db.session.execute(update(T).where(T.id == 1).values(status="paid"))
    db.session.execute(update(T).values({T.status: "paid"}))
    values = {"status": "paid"}
    db.session.execute(update(T).values(**values))
    setattr(w, "status", "paid")
    db.session.execute(text("UPDATE t SET status = 'paid' WHERE id = 1"))
    db.session.execute(insert(T).values(status="new"))
    T(status="new")
    audit.record("x", {"status": "paid"})
'''
    assert [line for line, _ in _status_writes(ast.parse(source))] == [3, 4, 5, 6, 7, 9, 10]


def test_docs_states_md_is_drawn_from_the_tables():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "tools" / "states.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_every_status_column_has_a_machine():
    """A model with a lifecycle (a `status` column) declares its table; a new one cannot be forgotten."""
    sys_path_tools = str(ROOT / "tools")
    import sys

    if sys_path_tools not in sys.path:
        sys.path.insert(0, sys_path_tools)
    import states as drawing

    from app.extensions import db

    covered = {machine.model for machine in drawing.machines()}
    # Not lifecycles: a risk rule's status is a setting an admin picks in its form (any to any), a rule version and a
    # recharge event record the status they saw, written once.
    not_moved = {"risk_rule", "risk_rule_version", "recharge_event"}
    missing = sorted(mapper.class_.__tablename__ for mapper in db.Model.registry.mappers
                     if "status" in mapper.columns and mapper.class_ not in covered
                     and mapper.class_.__tablename__ not in not_moved)
    assert not missing, f"models with a status column but no Machine: {missing}"
