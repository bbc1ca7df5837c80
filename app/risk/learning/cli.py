"""`flask kameng risk model ...` and `flask kameng risk anomaly ...`: thin, they call app.risk.learning."""
from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from app.cli_common import fail
from app.errors import KamengError

model_cli = AppGroup("model", help="Fraud model versions: train, list, promote.")
anomaly_cli = AppGroup("anomaly", help="Agent-tree anomalies: unsupervised scores per agent.")


@model_cli.command("train")
@click.option("--seed", default=7, show_default=True, type=int,
              help="LightGBM's seed (same history + seed: same model).")
def model_train(seed: int) -> None:
    """Collect labels, train a new version on the labelled history (time split) and print its holdout figures
    beside the active rules'. The new version is a shadow: `promote` it when it beats the rules."""
    from app.risk.learning import model

    try:
        row = model.train(seed=seed)
    except KamengError as exc:
        fail(exc.message)
    m, r = json.loads(row.metrics), json.loads(row.rules_metrics)
    click.echo(f"model v{row.version} (shadow, seed {seed}): trained on {m['train_n']} labelled decisions "
               f"({m['train_positives']} fraud), holdout {m['n']} ({m['positives']} fraud) from {m['holdout_from']}")
    click.echo(f"{'':<14}{'PR-AUC':>8}{'recall@1%':>11}")
    click.echo(f"{'model':<14}{m['pr_auc']:>8.4f}{m['recall_at_1pct']:>11.4f}")
    click.echo(f"{'active rules':<14}{r['pr_auc']:>8.4f}{r['recall_at_1pct']:>11.4f}   (they flag "
               f"{r['flagged_share']:.2%}, recall there {r['recall_flagged']:.4f}; the model at that share "
               f"{m['recall_at_rules_share']:.4f})")
    verdict = "beats" if model.beats(m, r) else "does not beat"
    click.echo(f"v{row.version} {verdict} the active rules (promotion needs a higher recall@1% and a PR-AUC not lower)")


@model_cli.command("promote")
@click.argument("version", type=int)
def model_promote(version: int) -> None:
    """Make VERSION the active model, only if it beats the active rules on its holdout (re-checked now)."""
    from app.risk.learning import model

    try:
        row = model.promote(version)
    except KamengError as exc:
        fail(exc.message, 1)
    click.echo(json.dumps(model.summary(row), ensure_ascii=False))


@model_cli.command("list")
def model_list() -> None:
    """Every version, newest first, with its figures (one JSON object a line)."""
    from app.risk.learning import model

    rows = model.versions()
    if not rows:
        click.echo("no model versions yet: flask kameng risk model train")
    for row in rows:
        click.echo(json.dumps(model.summary(row), ensure_ascii=False))


@anomaly_cli.command("run")
def anomaly_run() -> None:
    """Score every agent now (what the daily job does) and print the flags per reason."""
    from app.risk.learning import anomaly

    click.echo(json.dumps(anomaly.run(), ensure_ascii=False))


@anomaly_cli.command("list")
def anomaly_list() -> None:
    """Flagged agents, most unusual first."""
    from app.risk.learning import anomaly

    for row in anomaly.flagged():
        click.echo(json.dumps({"agent_id": row.agent_id, "agent": row.agent.name if row.agent else None,
                               "score": row.score, "reasons": json.loads(row.reasons), "cluster": row.cluster},
                              ensure_ascii=False))
