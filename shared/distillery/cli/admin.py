"""`distillery admin`: manage the platform's users and database directly (not via the gateway).

Uses `DISTILLERY_DATABASE_URL` (and `DISTILLERY_DATABASE_SCHEMA`); runs the migrations first
if needed. A token is printed once; the database keeps only its SHA-256. Tokens expire after
`--expires-in-days` (default `DISTILLERY_TOKEN_TTL_DAYS`, 90; 0 = never); `list-tokens` shows a
user's tokens (never their values) and `revoke-token ID` ends one at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

admin_app = typer.Typer(
    help="Platform administration (talks to the database directly).", no_args_is_help=True
)


def _session_factory(database_url: str | None):  # noqa: ANN202 - sessionmaker
    from distillery.db import make_session_factory
    from distillery.db.session import engine_for, migrate_locked
    from distillery.settings import Settings

    settings = Settings() if database_url is None else Settings(database_url=database_url)
    engine = engine_for(settings)
    migrate_locked(engine, settings.database_schema or None)
    return make_session_factory(engine), engine


DbOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="default: DISTILLERY_DATABASE_URL", show_default=False),
]
TtlOpt = Annotated[
    int | None,
    typer.Option(
        "--expires-in-days",
        min=0,
        max=3650,
        help="token lifetime in days, 0 = never (default: DISTILLERY_TOKEN_TTL_DAYS, 90)",
        show_default=False,
    ),
]


def _ttl(days: int | None) -> int:
    from distillery.settings import Settings

    return Settings().token_ttl_days if days is None else days


@admin_app.command("create-user")
def create_user(
    name: Annotated[str, typer.Argument(help="user name")],
    admin: Annotated[bool, typer.Option("--admin", help="may cancel or delete anyone's")] = False,
    expires_in_days: TtlOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Create a user and print their API token (shown this once)."""
    from distillery.db.auth import UserExists
    from distillery.db.auth import create_user as _create

    sessions, engine = _session_factory(database_url)
    try:
        with sessions() as session:
            try:
                _user, token = _create(session, name, admin=admin, ttl_days=_ttl(expires_in_days))
            except (UserExists, ValueError) as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(1) from None
    finally:
        engine.dispose()
    typer.echo(f"created {'admin ' if admin else ''}user {name}; API token (shown once):", err=True)
    typer.echo(token)


@admin_app.command("create-token")
def create_token(
    name: Annotated[str, typer.Argument(help="user name")],
    expires_in_days: TtlOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Issue another API token for an existing user (printed once)."""
    from sqlalchemy import select

    from distillery.db import User
    from distillery.db.auth import issue_token

    sessions, engine = _session_factory(database_url)
    try:
        with sessions() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                typer.echo(f"error: no user {name!r}", err=True)
                raise typer.Exit(1)
            token = issue_token(session, user, _ttl(expires_in_days))
    finally:
        engine.dispose()
    typer.echo(token)


@admin_app.command("list-tokens")
def list_tokens(
    name: Annotated[str, typer.Argument(help="user name")],
    database_url: DbOpt = None,
) -> None:
    """A user's tokens: id, created, last used, expires, state (never the token values)."""
    from sqlalchemy import select

    from distillery.db import User
    from distillery.db.auth import list_tokens as _list

    sessions, engine = _session_factory(database_url)
    try:
        with sessions() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                typer.echo(f"error: no user {name!r}", err=True)
                raise typer.Exit(1)
            tokens = _list(session, user)
    finally:
        engine.dispose()

    def when(ts: object) -> str:
        return ts.strftime("%Y-%m-%d %H:%M") if ts is not None else "-"  # type: ignore[attr-defined]

    typer.echo(f"{'id':>6}  {'created':<16}  {'last used':<16}  {'expires':<16}  state")
    for t in tokens:
        typer.echo(
            f"{t.id:>6}  {when(t.created_at):<16}  {when(t.last_used_at):<16}  "
            f"{when(t.expires_at):<16}  {t.state}"
        )


@admin_app.command("revoke-token")
def revoke_token(
    token_id: Annotated[int, typer.Argument(help="the token's id (see list-tokens)")],
    database_url: DbOpt = None,
) -> None:
    """Revoke a token: it stops authenticating at once."""
    from distillery.db.auth import revoke_token as _revoke

    sessions, engine = _session_factory(database_url)
    try:
        with sessions() as session:
            try:
                row = _revoke(session, token_id)
            except LookupError as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(1) from None
            user_name = row.user.name
    finally:
        engine.dispose()
    typer.echo(f"revoked token {token_id} of {user_name}", err=True)


@admin_app.command("migrate")
def migrate_db(database_url: DbOpt = None) -> None:
    """Bring the database schema up to date (`alembic upgrade head`)."""
    _sessions, engine = _session_factory(database_url)
    engine.dispose()
    typer.echo("database is up to date", err=True)


@admin_app.command("init")
def init_platform(
    database_url: DbOpt = None,
    wait: Annotated[
        float,
        typer.Option("--wait", help="seconds to keep retrying while Postgres or S3 is not up yet"),
    ] = 0.0,
) -> None:
    """Prepare a fresh platform: run the database migrations and create the datasets and
    artifacts buckets (`DISTILLERY_S3_*`). Safe to run again; the gateway needs both."""
    import time

    from distillery.s3 import ensure_bucket, make_storage
    from distillery.settings import Settings

    settings = Settings() if database_url is None else Settings(database_url=database_url)
    deadline = time.monotonic() + wait
    while True:
        try:
            _sessions, engine = _session_factory(database_url)
            engine.dispose()
            created = [
                bucket
                for bucket in (settings.datasets_bucket, settings.artifacts_bucket)
                if ensure_bucket(make_storage(settings, bucket))
            ]
            break
        except Exception as e:  # noqa: BLE001 - retried until --wait runs out, then shown whole
            if time.monotonic() >= deadline:
                typer.echo(f"error: {type(e).__name__}: {e}", err=True)
                raise typer.Exit(1) from None
            time.sleep(1)
    typer.echo("database is up to date", err=True)
    for bucket in (settings.datasets_bucket, settings.artifacts_bucket):
        state = "created" if bucket in created else "exists"
        typer.echo(f"bucket {bucket}: {state} (s3 {settings.s3_endpoint})", err=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `distillery` app."""
    app.add_typer(admin_app, name="admin")
