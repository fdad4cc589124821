"""`postroom init` (a starter config) and `postroom schema` (the config's JSON Schema)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PostroomError
from .root import Failed, app


# -- init, schema --------------------------------------------------------------------------
@app.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite starter files already there (never .env).")
def init(directory: Path, force: bool) -> None:
    """Write a starter project into DIRECTORY (default: here).

    A commented postroom.yaml with postroom.schema.json, .env.example (copied to .env if
    there is none), templates/layout.j2 and templates/hello.j2."""
    from ..config.schema import config_schema
    from ..starter import write_starter

    try:
        written = write_starter(directory, force=force, schema=_json(config_schema()))
    except PostroomError as exc:
        raise Failed(str(exc)) from None
    except OSError as exc:
        raise Failed(f"cannot write into {directory}: {exc.strerror}") from None
    click.echo(f"wrote into {directory.resolve()}:")
    for w in written:
        click.echo(f"  {w.path.relative_to(directory)}" + (f"  ({w.note})" if w.note else ""))
    steps = [] if directory.resolve() == Path.cwd() else [(f"cd {directory}", "")]
    steps += [
        ("postroom check --offline", "the starter is valid as written"),
        ("$EDITOR postroom.yaml .env", "your servers, addresses and password"),
        ("postroom check", "logs in to every server"),
        ("postroom send hello --dry-run", "the example job's message, sent nowhere"),
        ("postroom run", "the daemon"),
    ]
    click.echo("next:")
    for command, why in steps:
        click.echo(f"  {command:<32}# {why}" if why else f"  {command}")


@app.command()
def schema() -> None:
    """Print the config's JSON Schema (for editor completion).

    postroom schema > postroom.schema.json"""
    from ..config.schema import config_schema

    click.echo(_json(config_schema()))


def _json(value: object) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False)
