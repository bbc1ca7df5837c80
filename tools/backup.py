"""Backups of the PostgreSQL database, and their restore, checked.

    .venv/bin/python tools/backup.py backup  [--database-url URL] [--output-dir backups]     (make backup)
    .venv/bin/python tools/backup.py restore FILE --database-url URL_OF_A_NEW_DATABASE [--check]   (make restore)

backup: `pg_dump --format=custom` of DATABASE_URL (a consistent snapshot taken while the app runs) into
`<dir>/kameng-<UTC time>-<schema revision>.dump`, and beside it `<same>.json`: the schema (Alembic) revision, the
time, the size and SHA-256 of the dump, and pg_dump's version. Card secrets and personal data are in the dump
encrypted: restoring needs the same CARD_SECRET_KEY, which is backed up apart from the database (README).

restore: checks the dump against its manifest (size and SHA-256), refuses a target database that already holds
tables, creates it when missing, runs `pg_restore --exit-on-error --no-owner --no-privileges`, and checks that the
restored schema revision is the manifest's. With --check it then runs `flask kameng ledger-check` and
`flask kameng chain verify` against the restored database (with this environment's keys) and fails unless both
pass. Point the app's DATABASE_URL at it (or rename it) to serve from it; run `flask db upgrade` first if the code
is newer than the backup's revision.

Exit status: 0 done, 1 a check failed, 2 bad arguments or a tool missing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).parent / "flask")


class BackupError(Exception):
    pass


def libpq_url(url: str) -> str:
    """A URL pg_dump / psycopg understand (SQLAlchemy's driver suffix removed)."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    if not url.startswith("postgresql://"):
        raise BackupError("backups are for PostgreSQL (DATABASE_URL=postgresql://...); with SQLite, copy its file "
                          "while the app is stopped")
    return url


def tool(name: str) -> str:
    """pg_dump / pg_restore matching the newest server binaries installed, else whatever is on PATH."""
    import glob

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[4].split(".")])
    found = candidates[-1] if candidates else shutil.which(name)
    if not found:
        raise BackupError(f"{name} not found: apt-get install postgresql-client")
    return found


def schema_revisions(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        exists = conn.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL").fetchone()[0]
        if not exists:
            return []
        return sorted(row[0] for row in conn.execute("SELECT version_num FROM alembic_version"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backup(database_url: str, output_dir: Path) -> Path:
    url = libpq_url(database_url)
    revisions = schema_revisions(url)
    if not revisions:
        raise BackupError("the database has no schema revision (alembic_version): is it migrated?")
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dump = output_dir / f"kameng-{stamp}-{'+'.join(revisions)}.dump"
    partial = dump.with_suffix(".dump.partial")
    pg_dump = tool("pg_dump")
    result = subprocess.run([pg_dump, "--format=custom", "--compress=6", "--no-owner", "--no-privileges",
                             "--file", str(partial), "--dbname", url], capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {result.stderr.strip()}")
    partial.rename(dump)  # only a complete dump gets the final name
    version = subprocess.run([pg_dump, "--version"], capture_output=True, text=True).stdout.strip()
    manifest = {"file": dump.name, "schema_revisions": revisions, "created_at": stamp, "bytes": dump.stat().st_size,
                "sha256": sha256_of(dump), "database": urlsplit(url).path.lstrip("/"), "pg_dump": version,
                "format": "pg_dump custom"}
    dump.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dump


def read_manifest(dump: Path) -> dict:
    path = dump.with_suffix(".json")
    if not path.exists():
        raise BackupError(f"{path.name} (the manifest written with the dump) is missing")
    manifest = json.loads(path.read_text())
    if dump.stat().st_size != manifest["bytes"] or sha256_of(dump) != manifest["sha256"]:
        raise BackupError(f"{dump.name} does not match its manifest (size or SHA-256): damaged or not this backup")
    return manifest


def _create_or_check_empty(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name or name == "postgres":
        raise BackupError("give the URL of a new database to restore into (not the server's postgres database)")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            return
    with psycopg.connect(url, connect_timeout=10) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
    if tables:
        raise BackupError(f"database {name} already holds {tables} tables: restore into a new, empty database")


def restore(dump: Path, database_url: str) -> dict:
    manifest = read_manifest(dump)
    url = libpq_url(database_url)
    _create_or_check_empty(url)
    result = subprocess.run([tool("pg_restore"), "--exit-on-error", "--no-owner", "--no-privileges",
                             "--dbname", url, str(dump)], capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"pg_restore failed: {result.stderr.strip()}")
    restored = schema_revisions(url)
    if restored != manifest["schema_revisions"]:
        raise BackupError(f"restored schema revision {restored} is not the manifest's {manifest['schema_revisions']}")
    return manifest


def check(database_url: str) -> list[tuple[str, int, str]]:
    """`flask kameng ledger-check` and `flask kameng chain verify` against the database: (command, status, output)."""
    env = dict(os.environ, DATABASE_URL=database_url, FAB_CREATE_DB="False", FAB_UPDATE_PERMS="False")
    env.pop("REDIS_URL", None)  # a check must not enqueue into the live system's queues
    results = []
    for command in (["kameng", "ledger-check"], ["kameng", "chain", "verify"]):
        done = subprocess.run([FLASK, "--app", "run", *command], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=1800)
        output = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if line.strip())
        results.append((" ".join(command), done.returncode, output))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help="pg_dump (custom format) with a manifest naming the schema revision")
    b.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    b.add_argument("--output-dir", type=Path, default=ROOT / "backups")
    r = sub.add_parser("restore", help="restore a dump into a new database, then check it")
    r.add_argument("dump", type=Path)
    r.add_argument("--database-url", required=True, help="the new database (created when missing)")
    r.add_argument("--check", action="store_true", help="run ledger-check and chain verify on the restored data")
    args = parser.parse_args(argv)
    try:
        if args.command == "backup":
            if not args.database_url:
                raise BackupError("set DATABASE_URL or pass --database-url")
            dump = backup(args.database_url, args.output_dir)
            manifest = json.loads(dump.with_suffix(".json").read_text())
            print(f"backup written: {dump} ({manifest['bytes']} bytes, schema {'+'.join(manifest['schema_revisions'])}"
                  f", sha256 {manifest['sha256'][:16]}...)")
            return 0
        if not args.dump.exists():
            raise BackupError(f"no such file: {args.dump}")
        manifest = restore(args.dump, args.database_url)
        print(f"restored {args.dump.name} (schema {'+'.join(manifest['schema_revisions'])}, taken "
              f"{manifest['created_at']})")
        if args.check:
            failed = False
            for command, status, output in check(args.database_url):
                print(f"{command}: {'ok' if status == 0 else f'FAILED (exit {status})'}\n  "
                      + output.replace("\n", "\n  "))
                failed |= status != 0
            return 1 if failed else 0
        return 0
    except BackupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2 if "not found" in str(exc) or "set DATABASE_URL" in str(exc) else 1


if __name__ == "__main__":
    sys.exit(main())
