"""`distillery admin`: manage the platform's users and database directly (not via the gateway).

Uses `DISTILLERY_DATABASE_URL` (and `DISTILLERY_DATABASE_SCHEMA`); runs the migrations first
if needed. A token is printed once; the database keeps only its SHA-256.
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


@admin_app.command("create-user")
def create_user(
    name: Annotated[str, typer.Argument(help="user name")],
    admin: Annotated[bool, typer.Option("--admin", help="may cancel or delete anyone's")] = False,
    database_url: DbOpt = None,
) -> None:
    """Create a user and print their API token (shown this once)."""
    from distillery.db.auth import UserExists
    from distillery.db.auth import create_user as _create

    sessions, engine = _session_factory(database_url)
    try:
        with sessions() as session:
            try:
                _user, token = _create(session, name, admin=admin)
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
            token = issue_token(session, user)
    finally:
        engine.dispose()
    typer.echo(token)


@admin_app.command("migrate")
def migrate_db(database_url: DbOpt = None) -> None:
    """Bring the database schema up to date (`alembic upgrade head`)."""
    _sessions, engine = _session_factory(database_url)
    engine.dispose()
    typer.echo("database is up to date", err=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `distillery` app."""
    app.add_typer(admin_app, name="admin")
