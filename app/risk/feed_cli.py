"""`flask kameng risk feed ...`: the shared risk feed (共享名单) from the command line; each command calls
app.risk.feed and prints JSON, or a message and a non-zero exit on bad input."""
from __future__ import annotations

import json
from pathlib import Path

import click
from flask.cli import AppGroup

from app.cli_common import fail
from app.errors import KamengError

feed_cli = AppGroup("feed", help="The shared risk feed: signed list entries exchanged with partner platforms.")
key_cli = AppGroup("key", help="Sharing keys: the HMAC keys partners hash values under.")
partner_cli = AppGroup("partner", help="Partner platforms: trusted publishers and feed subscribers.")
feed_cli.add_command(key_cli)
feed_cli.add_command(partner_cli)


def _echo(data: dict) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


@feed_cli.command("identity")
@click.option("--publisher-id", required=True, help="This platform's publisher id, as partners will register it.")
@click.option("--replace", is_flag=True, help="Replace an existing identity (partners must register the new key).")
def identity(publisher_id: str, replace: bool) -> None:
    """Generate this platform's Ed25519 signing identity; prints the public key to give partners."""
    from app.risk import feed

    try:
        row = feed.create_identity(publisher_id, replace=replace)
    except KamengError as exc:
        fail(exc.message)
    _echo({"publisher_id": row.publisher_id, "public_key": row.public_key})


@key_cli.command("add")
@click.option("--key-id", required=True)
@click.option("--secret", required=True, help="64-128 hex characters, as agreed with the partners.")
@click.option("--current", is_flag=True, help="Export under this key from now on.")
def key_add(key_id: str, secret: str, current: bool) -> None:
    """Add a sharing key received from a partner."""
    from app.risk import feed

    try:
        key, _ = feed.add_key(key_id, secret, current=current)
    except KamengError as exc:
        fail(exc.message)
    _echo({"key_id": key.key_id, "current": key.current})


@key_cli.command("rotate")
@click.option("--key-id", default=None, help="The new key's id (default: generated).")
def key_rotate(key_id: str | None) -> None:
    """Generate a new sharing key, current for export; prints its secret once (hand it to the partners)."""
    from app.risk import feed

    try:
        key, secret = feed.rotate_key(key_id=key_id)
    except KamengError as exc:
        fail(exc.message)
    _echo({"key_id": key.key_id, "secret": secret, "current": True})


@key_cli.command("retire")
@click.argument("key_id")
def key_retire(key_id: str) -> None:
    """Stop using a sharing key (for export and for matching)."""
    from app.risk import feed

    try:
        key = feed.retire_key(key_id)
    except KamengError as exc:
        fail(exc.message)
    _echo({"key_id": key.key_id, "active": key.active})


@partner_cli.command("add")
@click.option("--publisher-id", required=True)
@click.option("--name", default="")
@click.option("--public-key", required=True, help="The partner's Ed25519 public key (base64).")
@click.option("--key-ids", required=True, help="Comma-separated sharing key ids the partner hashes under.")
def partner_add(publisher_id: str, name: str, public_key: str, key_ids: str) -> None:
    """Register a partner platform (a trusted publisher)."""
    from app.risk import feed

    try:
        partner = feed.register_partner(publisher_id, name, public_key, key_ids)
    except KamengError as exc:
        fail(exc.message)
    _echo({"id": partner.id, "publisher_id": partner.publisher_id, "key_ids": partner.key_ids})


@partner_cli.command("key")
@click.argument("publisher_id")
@click.option("--allow", default=None, help="IP allow-list (addresses or networks, comma-separated).")
def partner_key(publisher_id: str, allow: str | None) -> None:
    """Create the Open API key a partner pulls our feed with; prints the secret once."""
    from sqlalchemy import select

    from app.extensions import db
    from app.risk import feed
    from app.risk.feed_models import RiskFeedPartner

    partner_id = db.session.scalar(select(RiskFeedPartner.id).where(RiskFeedPartner.publisher_id == publisher_id))
    if partner_id is None:
        fail(f"unknown partner {publisher_id!r}")
    try:
        key, secret = feed.create_partner_key(partner_id, ip_allowlist=allow)
    except KamengError as exc:
        fail(exc.message)
    _echo({"app_key": key.app_key, "secret": secret, "scope": key.scope})


@feed_cli.command("legal-basis")
@click.option("--basis", required=True, type=click.Choice(["consent", "contract", "legal_obligation",
                                                           "legitimate_interest"]))
@click.option("--text", "text", default=None, help="The consent / notice text.")
@click.option("--file", "file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Read the text from this file.")
def legal_basis(basis: str, text: str | None, file: Path | None) -> None:
    """Record a new version of the legal basis for sharing (export is refused until one exists)."""
    from app.risk import feed

    if file is not None:
        if not file.exists():
            fail(f"file not found: {file}")
        text = file.read_text(encoding="utf-8", errors="replace")
    try:
        row = feed.record_legal_basis(basis, text or "")
    except KamengError as exc:
        fail(exc.message)
    _echo({"version": row.version, "basis": row.basis})


@feed_cli.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--since", default=None, help="Only what changed after this time (ISO or unix seconds).")
def export(file: Path, since: str | None) -> None:
    """Write the signed feed to FILE (audited: who, when, how many entries, to which file)."""
    from app.risk import feed

    try:
        moment = feed.parse_time(since, "since") if since else None
        document, facts = feed.export_file(str(file), moment)
    except KamengError as exc:
        fail(exc.message)
    try:
        file.write_bytes(document)
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror}")
    _echo({"file": str(file), "entries": facts["entries"], "key_id": facts["key_id"], "skipped": facts["skipped"]})


@feed_cli.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_(file: Path) -> None:
    """Verify a partner's signed feed in FILE and put its entries on the review list (never block)."""
    from app.risk import feed

    if not file.exists():
        fail(f"file not found: {file}")
    try:
        summary = feed.import_feed(file.read_bytes(), f"file:{file.name}")
    except KamengError as exc:
        fail(exc.message)
    _echo(summary)


@feed_cli.command("pull")
@click.argument("base_url")
@click.option("--app-key", required=True)
@click.option("--secret", required=True)
@click.option("--since", default=None, help="Only what changed after this time (the last feed's generated_at).")
def pull(base_url: str, app_key: str, secret: str, since: str | None) -> None:
    """Pull a partner's feed from BASE_URL/open/v1/risk/feed (signed Open API call) and import it."""
    import requests

    from app.openapi.client import OpenApiClient
    from app.risk import feed

    try:
        answer = OpenApiClient(base_url, app_key, secret).request("GET", "/open/v1/risk/feed",
                                                                  params={"since": since} if since else None)
    except (requests.RequestException, ValueError) as exc:
        fail(f"cannot reach {base_url}: {exc}")
    if answer.status_code != 200:
        fail(f"{base_url} answered {answer.status_code}: {answer.text[:300]}")
    try:
        summary = feed.import_feed(answer.content, f"pull:{base_url}")
    except KamengError as exc:
        fail(exc.message)
    _echo(summary)
