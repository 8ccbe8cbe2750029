"""The `seats` command line (README "Using it"). `--json` prints one object on stdout."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.exc import OperationalError

from shared import queues
from shared.bootstrap import Runtime, build
from shared.cli import stackfile
from shared.config import LOCALSTRIPE_KEY, Settings
from shared.domain.errors import Refused
from shared.domain.money import plain_amount
from shared.domain.periods import INTERVALS
from shared.domain.renewals import SubscriptionStatus
from shared.domain.seats import PurchaseStatus, Role
from shared.payments.gateway import PaymentUnavailable
from shared.services import operations, operators, provisioning, renewals, signin
from shared.services.views import to_json
from shared.store.db import upgrade

Handler = Callable[[argparse.Namespace, Callable[[], Runtime]], tuple[dict[str, Any], str]]


def cli_settings() -> Settings:
    """The environment's settings, completed from a running `seats up` (its stack file);
    then, with no DATABASE_URL, the embedded database, and with no STRIPE_API_KEY, the
    stand-in's test key (the command line is for a person at a machine, where that is
    what they expect)."""
    settings = Settings.from_env(stackfile.environment())
    if not settings.stripe_api_key:
        settings = replace(settings, stripe_api_key=LOCALSTRIPE_KEY)
    if settings.database_url:
        return settings
    from shared.cli.embedded import embedded_database_url

    return replace(settings, database_url=embedded_database_url())


@contextmanager
def audited(rt: Runtime, action: str, target: str) -> Iterator[None]:
    """An operator's command goes in the audit log, with its outcome, whatever happens."""
    actor = f"cli:{getpass.getuser()}"
    try:
        yield
    except Exception as error:
        operators.record(rt.uow(), actor, action, target, f"failed: {error}")
        raise
    operators.record(rt.uow(), actor, action, target, "done")


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1 or number > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range") from None
    return number


def _page_size(value: str) -> int:
    number = _positive(value)
    if number > operations.MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{value} is more than {operations.MAX_PAGE}")
    return number


def db_upgrade(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    upgrade(str(cli_settings().database_url))
    return {"status": "ok", "revision": "head"}, "database schema is up to date"


def org_create(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    org_id = provisioning.create_organization(
        runtime().uow(), args.name, args.currency, args.timezone
    )
    return {"id": org_id}, f"organization {org_id} created"


def user_create(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    user_id, token = provisioning.create_user(runtime().uow(), args.org, args.email, args.role)
    return (
        {"id": user_id, "token": token},
        f"user {user_id} created; API token (shown once, keep it safe):\n{token}",
    )


def user_login_link(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rt = runtime()
    link = signin.issue_link(rt.uow(), args.email, args.org)
    url = link.url(rt.settings.public_url)
    minutes = int(signin.LINK_LIFETIME.total_seconds() // 60)
    return (
        {"url": url, "expires_at": link.expires_at.isoformat()},
        f"sign-in link for {args.email} (valid {minutes} minutes, works once):\n{url}",
    )


def subscription_create(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    sub_id = provisioning.create_subscription(
        runtime().uow(),
        args.org,
        args.product,
        args.unit_amount,
        args.interval,
        args.seats,
        args.period_start,
        args.renews_at,
    )
    return {"id": sub_id}, f"subscription {sub_id} created"


def purchases_list(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rows = operations.list_purchases(
        runtime().uow(), args.status, args.parked, args.org, args.older_than
    )
    text = "\n".join(
        f"{r.id}\t{r.status}\t{plain_amount(r.amount_due, r.currency)}\t{r.attention or ''}"
        for r in rows
    )
    return {"purchases": to_json(rows)}, text or "no purchases"


def purchases_retry(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rt = runtime()
    with audited(rt, "purchase.retry", f"purchase:{args.id}"):
        status = operations.retry_purchase(rt.uow(), rt.engine, rt.gateway, args.id)
    return {"id": args.id, "status": status}, f"purchase {args.id} is {status}"


def webhooks_replay(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    if bool(args.event_id) == bool(args.failed):
        raise Refused("give one EVENT_ID or --failed", "usage")
    rt = runtime()
    with audited(
        rt, "webhook.replay", "events:failed" if args.failed else f"event:{args.event_id}"
    ):
        if args.failed:
            outcomes = operations.replay_failed_events(rt.uow(), rt.gateway)
        else:
            outcomes = operations.replay_events(rt.uow(), rt.gateway, [args.event_id])
    text = "\n".join(f"{event_id}: {outcome}" for event_id, outcome in outcomes.items())
    failed = [event_id for event_id, outcome in outcomes.items() if outcome.startswith("failed")]
    if failed:  # a replay that failed keeps the event's stored outcome, and says so
        raise Refused(
            f"{len(failed)} of {len(outcomes)} events could not be handled; their stored "
            f"outcome is unchanged:\n{text}",
            "replay_failed",
            events=outcomes,
        )
    return {"events": outcomes}, text or "no failed events"


def alerts_list(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rows, next_after = operations.list_alerts(runtime().uow(), args.all, args.after, args.limit)
    text = "\n".join(f"{r.id}\t{r.kind}\t{r.message}" for r in rows)
    if next_after is not None:
        text += f"\nmore: seats alerts list --after {next_after}"
    return {"alerts": to_json(rows), "next_after": next_after}, text or "no open alerts"


def alerts_resolve(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rt = runtime()
    with audited(rt, "alert.resolve", f"alert:{args.id}"):
        operations.resolve_alert(rt.uow(), args.id)
    return {"id": args.id, "resolved": True}, f"alert {args.id} resolved"


def renewals_run(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rt = runtime()
    tally = renewals.run_due(
        rt.uow(),
        rt.engine,
        rt.gateway,
        renewals.Dunning(rt.settings.dunning_days, rt.settings.off_session),
        now=datetime.now(UTC),
        as_of=args.as_of,
        stuck_after=rt.settings.stuck_after,
    )
    text = ", ".join(f"{key} {value}" for key, value in tally.items())
    return tally, text


def renewals_list(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rows = renewals.unsettled(runtime().uow(), args.status)
    text = "\n".join(
        f"{r.subscription_id}\t{r.status}\t{r.renews_at}\t{r.attempts} tries\t"
        f"{r.failure_code or ''}\tnext {r.next_attempt_at or 'none'}"
        for r in rows
    )
    return {"renewals": to_json(rows)}, text or "no plan is past due or suspended"


def _table(rows: list[Any], *fields: str) -> str:
    return "\n".join("\t".join(str(getattr(row, name)) for name in fields) for row in rows)


def webhooks_list(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rows = operations.list_events(runtime().uow(), args.outcome, args.type, args.limit)
    text = _table(rows, "id", "type", "outcome", "attempts", "received_at", "error")
    return {"events": to_json(rows)}, text or "no events"


def orgs_list(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rows = operations.list_organizations(runtime().uow())
    return {"organizations": to_json(rows)}, _table(rows, "id", "name", "currency", "timezone")


def users_list(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rows = operations.list_users(runtime().uow(), args.org)
    return {"users": to_json(rows)}, _table(rows, "id", "email", "role") or "no users"


def subscriptions_list(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rows = operations.list_subscriptions(runtime().uow(), args.org, args.status)
    text = _table(rows, "id", "organization_id", "product", "status", "paid_seats", "renews_at")
    return {"subscriptions": to_json(rows)}, text or "no subscriptions"


def operator_create(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    operator_id, token = operators.create_operator(runtime().uow(), args.email)
    return (
        {"id": operator_id, "token": token},
        f"operator {operator_id} created; token (shown once, keep it safe):\n{token}",
    )


def operator_login_link(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rt = runtime()
    with audited(rt, "operator.login_link", f"operator:{args.email.strip()}"):
        link = signin.issue_operator_link(rt.uow(), args.email)
    url = link.url(rt.settings.public_url)
    minutes = int(signin.LINK_LIFETIME.total_seconds() // 60)
    return (
        {"url": url, "expires_at": link.expires_at.isoformat()},
        f"operator sign-in link for {args.email} (valid {minutes} minutes, works once):\n{url}",
    )


def ops_status(
    args: argparse.Namespace, runtime: Callable[[], Runtime]
) -> tuple[dict[str, Any], str]:
    rt = runtime()
    broker = redis.Redis.from_url(
        rt.settings.redis_url or queues.LOCAL_REDIS, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        figures = operations.status(rt.uow(), broker, rt.settings.stuck_after)
    finally:
        broker.close()
    lines = [f"broker: {figures.broker}", "queues:"]
    for queue in figures.queues:
        age = f"{queue.oldest_age_seconds:.0f} s" if queue.oldest_age_seconds is not None else "-"
        lines.append(f"  {queue.name:<10} {queue.depth:>6} waiting, oldest {age}")
    lines.append(f"workers online: {len(figures.workers)}")
    lines += [f"  {w.hostname} (pid {w.pid}) {','.join(w.queues)}" for w in figures.workers]
    lines += [
        "purchases: " + ", ".join(f"{k} {v}" for k, v in sorted(figures.purchases.items())),
        f"  parked {figures.purchases_parked}, stuck {figures.purchases_stuck}",
        f"renewals: past due {figures.renewals_past_due}, suspended "
        f"{figures.renewals_suspended}, parked {figures.renewals_parked}",
        f"webhooks: failed {figures.webhooks_failed}, waiting {figures.webhooks_pending}",
        f"open alerts: {figures.alerts_open}",
    ]
    return to_json(figures), "\n".join(lines)


def flower(args: argparse.Namespace, runtime: Callable[[], Runtime]) -> tuple[dict[str, Any], str]:
    """Flower on the broker this stack uses (from `seats up`'s stack file when the
    environment says nothing); it replaces this process, so Ctrl-C stops it."""
    env = stackfile.environment()
    broker = env.get("REDIS_URL") or queues.LOCAL_REDIS
    binary = shutil.which("celery", path=str(Path(sys.executable).parent)) or "celery"
    argv = [binary, "-A", "worker.app", "--broker", broker, "flower"]
    argv += [f"--port={args.port}", f"--address={args.address}"]
    if env.get("FLOWER_BASIC_AUTH"):
        argv.append(f"--basic-auth={env['FLOWER_BASIC_AUTH']}")
    print(f"seats: Flower on http://{args.address}:{args.port}/ watching {broker}", flush=True)
    os.execve(binary, argv, {**env, "REDIS_URL": broker})  # noqa: S606 (our own celery)


def up(args: argparse.Namespace, runtime: Callable[[], Runtime]) -> tuple[dict[str, Any], str]:
    from shared.cli.supervisor import run_stack

    code = run_stack(args.port)
    raise SystemExit(code)


class Parser(argparse.ArgumentParser):
    """Usage errors follow --json too, so scripts always get an object to read."""

    wants_json = False

    def error(self, message: str) -> Any:  # type: ignore[override]
        if self.wants_json:
            print(json.dumps({"error": "usage", "message": message}))
            raise SystemExit(2)
        super().error(message)


def _group(groups: Any, name: str, help: str) -> Any:
    """`seats NAME ACTION ...`: a command group whose action is required."""
    return groups.add_parser(name, help=help).add_subparsers(
        dest="action", required=True, parser_class=Parser
    )


def parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    Parser.wants_json = "--json" in argv
    common = Parser(add_help=False)
    # SUPPRESS: a subcommand must not reset a --json given before it (`seats --json org create`)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON object on stdout",
    )
    root = Parser(prog="seats", description="Seat billing: provision, migrate, run.")
    root.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    groups = root.add_subparsers(dest="group", required=True, parser_class=Parser)

    db = _group(groups, "db", "database schema")
    db.add_parser("upgrade", parents=[common], help="apply migrations").set_defaults(run=db_upgrade)

    org = _group(groups, "org", "organizations")
    create = org.add_parser("create", parents=[common], help="create an organization")
    create.add_argument("--name", required=True)
    create.add_argument("--currency", default="cad")
    create.add_argument("--timezone", default="America/Toronto")
    create.set_defaults(run=org_create)

    user = _group(groups, "user", "users")
    create = user.add_parser("create", parents=[common], help="create a user and an API token")
    create.add_argument("--org", type=_positive, required=True)
    create.add_argument("--email", required=True)
    create.add_argument("--role", choices=[role.value for role in Role], required=True)
    create.set_defaults(run=user_create)
    link = user.add_parser(
        "login-link",
        parents=[common],
        help="a one-time sign-in link to the customer pages (valid 15 minutes)",
    )
    link.add_argument("--email", required=True)
    link.add_argument("--org", type=_positive, default=None, help="when several share the email")
    link.set_defaults(run=user_login_link)

    sub = _group(groups, "subscription", "plans")
    create = sub.add_parser("create", parents=[common], help="create a plan")
    create.add_argument("--org", type=_positive, required=True)
    create.add_argument("--product", required=True)
    create.add_argument(
        "--unit-amount", type=_positive, required=True, help="per seat and period, in minor units"
    )
    create.add_argument("--interval", choices=INTERVALS, required=True)
    create.add_argument("--seats", type=_positive, required=True)
    create.add_argument("--period-start", type=_date, required=True)
    create.add_argument("--renews-at", type=_date, default=None)
    create.set_defaults(run=subscription_create)

    ops = _group(groups, "purchases", "operators: purchases")
    listing = ops.add_parser("list", parents=[common], help="latest purchases")
    listing.add_argument("--status", choices=[status.value for status in PurchaseStatus])
    listing.add_argument("--parked", action="store_true", help="only those waiting for you")
    listing.add_argument("--org", type=_positive, default=None, help="one organization's")
    listing.add_argument(
        "--older-than", type=_positive, default=None, metavar="SECONDS", help="made before"
    )
    listing.set_defaults(run=purchases_list)
    retry = ops.add_parser("retry", parents=[common], help="un-park a purchase and charge it now")
    retry.add_argument("id", type=_positive)
    retry.set_defaults(run=purchases_retry)

    hooks = _group(groups, "webhooks", "operators: Stripe events")
    replay = hooks.add_parser("replay", parents=[common], help="process stored events again")
    replay.add_argument("event_id", nargs="?")
    replay.add_argument("--failed", action="store_true", help="every event whose processing failed")
    replay.set_defaults(run=webhooks_replay)
    listing = hooks.add_parser("list", parents=[common], help="stored events, newest first")
    listing.add_argument(
        "--outcome", choices=["pending", "processed", "ignored", "failed", "invalid"]
    )
    listing.add_argument("--type", default=None, help="e.g. payment_intent.succeeded")
    listing.add_argument("--limit", type=_page_size, default=operations.PAGE)
    listing.set_defaults(run=webhooks_list)

    orgs = _group(groups, "orgs", "operators: organizations")
    orgs.add_parser("list", parents=[common], help="organizations").set_defaults(run=orgs_list)
    users = _group(groups, "users", "operators: users")
    listing = users.add_parser("list", parents=[common], help="an organization's users")
    listing.add_argument("--org", type=_positive, required=True)
    listing.set_defaults(run=users_list)
    subs = _group(groups, "subscriptions", "operators: plans")
    listing = subs.add_parser("list", parents=[common], help="plans")
    listing.add_argument("--org", type=_positive, default=None)
    listing.add_argument("--status", choices=[status.value for status in SubscriptionStatus])
    listing.set_defaults(run=subscriptions_list)

    operator = _group(groups, "operator", "operators themselves")
    create = operator.add_parser("create", parents=[common], help="an operator and a token")
    create.add_argument("--email", required=True)
    create.set_defaults(run=operator_create)
    link = operator.add_parser(
        "login-link",
        parents=[common],
        help="a one-time sign-in link to the operator pages under /ops (valid 15 minutes)",
    )
    link.add_argument("--email", required=True)
    link.set_defaults(run=operator_login_link)
    ops_group = _group(groups, "ops", "operators: the state of the service")
    ops_group.add_parser(
        "status", parents=[common], help="queues, workers, what needs a person"
    ).set_defaults(run=ops_status)

    plans = _group(groups, "renewals", "renewals and failed payments")
    run = plans.add_parser("run", parents=[common], help="renew the plans due now")
    run.add_argument("--as-of", type=_date, default=None, help="the date to renew for")
    run.set_defaults(run=renewals_run)
    listing = plans.add_parser("list", parents=[common], help="plans past due or suspended")
    listing.add_argument(
        "--status", choices=[SubscriptionStatus.PAST_DUE.value, SubscriptionStatus.SUSPENDED.value]
    )
    listing.set_defaults(run=renewals_list)

    alerts = _group(groups, "alerts", "operators: refunds, disputes")
    listing = alerts.add_parser("list", parents=[common], help="open alerts")
    listing.add_argument("--all", action="store_true", help="resolved ones too")
    listing.add_argument(
        "--limit",
        type=_page_size,
        default=operations.PAGE,
        help=f"at most this many (default {operations.PAGE}, at most {operations.MAX_PAGE})",
    )
    listing.add_argument(
        "--after", type=_positive, default=None, help="those after this id (the next_after shown)"
    )
    listing.set_defaults(run=alerts_list)
    resolve = alerts.add_parser("resolve", parents=[common], help="mark an alert handled")
    resolve.add_argument("id", type=_positive)
    resolve.set_defaults(run=alerts_resolve)

    watch = groups.add_parser("flower", parents=[common], help="Flower on this stack's broker")
    watch.add_argument("--port", type=_positive, default=5555)
    watch.add_argument("--address", default="127.0.0.1")
    watch.set_defaults(run=flower)

    start = groups.add_parser(
        "up", parents=[common], help="run web, worker and beat in the foreground"
    )
    start.add_argument("--port", type=_positive, default=None)
    start.set_defaults(run=up)
    return root


def _problem(error: Exception) -> tuple[str, str]:
    """A failure as a code for scripts and a sentence for people (no traceback)."""
    if isinstance(error, Refused):
        return error.code, error.message
    if isinstance(error, PaymentUnavailable):
        return "payment_unavailable", f"cannot reach Stripe ({error}); try again later"
    return "database_unavailable", "cannot reach the database; check DATABASE_URL"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(argv).parse_args(argv)
    built: list[Runtime] = []

    def runtime() -> Runtime:
        if not built:
            built.append(build(cli_settings(), pool_size=1))
        return built[0]

    try:
        result, text = args.run(args, runtime)
    except (Refused, OperationalError, PaymentUnavailable) as problem:
        code, message = _problem(problem)
        details = problem.details if isinstance(problem, Refused) else {}
        if args.json:
            print(json.dumps({"error": code, "message": message, **details}))
        else:
            print(f"seats: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        for rt in built:
            rt.engine.dispose()
    print(json.dumps(result) if args.json else text)
