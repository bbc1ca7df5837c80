"""/trust/: the public page of the tamper-evident chain (no login): the daily head hashes, and whether a record
hash (the one a buyer's lookup shows for a delivery) is in the chain. Nothing personal is shown."""
from __future__ import annotations

from flask import Blueprint, Flask, jsonify, redirect, render_template, request, url_for

from app.chain import service as chain
from app.errors import ValidationError

trust = Blueprint("trust", __name__)


@trust.get("/trust/")
def trust_index():
    chain.seal(wait=False)  # cheap when nothing is waiting; never queues behind a running seal
    return render_template("kameng/trust/index.html", heads=chain.heads(30), today=chain.head_at())


@trust.get("/trust/record")
def trust_record_query():
    """The page's form (GET ?hash=...) leads to the record's own address."""
    try:
        record_hash = chain.clean_hash(request.args.get("hash", ""))
    except ValidationError as exc:
        return render_template("kameng/trust/record.html", error=exc.message, record=None, record_hash=None), 400
    return redirect(url_for("trust.trust_record", record_hash=record_hash))


@trust.get("/trust/record/<record_hash>")
def trust_record(record_hash: str):
    try:
        record = chain.find(record_hash)
    except ValidationError as exc:
        return render_template("kameng/trust/record.html", error=exc.message, record=None, record_hash=None), 400
    return render_template("kameng/trust/record.html", record=record, record_hash=record_hash.strip().lower(),
                           error=None), 200 if record else 404


@trust.get("/trust/api/heads")
def api_heads():
    chain.seal(wait=False)
    return jsonify({"heads": chain.heads(30), "head": chain.head_at()})


@trust.get("/trust/api/record/<record_hash>")
def api_record(record_hash: str):
    try:
        record = chain.find(record_hash)
    except ValidationError as exc:
        response = jsonify(exc.to_dict())
        response.status_code = 400
        return response
    if record is None:
        response = jsonify({"record_hash": record_hash.strip().lower(), "in_chain": False})
        response.status_code = 404
        return response
    return jsonify(record)


def register(app: Flask) -> None:
    app.register_blueprint(trust)
