"""`postroom deploy systemd|compose`: the deployment files for this config."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from .root import Failed, app, broken_config, config_option, settings


# -- deploy --------------------------------------------------------------------------------
@app.group()
def deploy() -> None:
    """Write a systemd unit or a compose file for this config (its secrets, paths and state)."""


def _write_deployment(ctx: click.Context, kind: str, output: Path, force: bool, postroom: str | None) -> None:
    from .. import deploy as deployment

    try:
        planned = deployment.plan(settings(ctx, logs=False), postroom=postroom)
        text = deployment.systemd_unit(planned) if kind == "systemd" else deployment.compose_file(planned)
    except ConfigError as exc:
        raise broken_config(exc) from None
    if output.exists() and not force:
        raise Failed(f"{output} exists; --force overwrites it")
    try:
        output.write_text(text)
    except OSError as exc:
        raise Failed(f"cannot write {output}: {exc.strerror}") from None
    steps = (
        deployment.systemd_steps(planned, output) if kind == "systemd" else deployment.compose_steps(planned, output)
    )
    click.echo(f"wrote {output} for {planned.config}")
    secrets = ", ".join(planned.credentials) or "none"
    click.echo(f"secrets it loads ({len(planned.credentials)}): {secrets}")
    click.echo("next:")
    for step in steps:
        click.echo(f"  {step}")


@deploy.command("systemd")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("postroom.service"))
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@click.option("--exec", "postroom", metavar="PATH", help="The postroom the unit runs (default: this one).")
@config_option
@click.pass_context
def deploy_systemd(ctx: click.Context, output: Path, force: bool, postroom: str | None) -> None:
    """A systemd unit for this config: one LoadCredential= per secret it uses."""
    _write_deployment(ctx, "systemd", output, force, postroom)


@deploy.command("compose")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("compose.yaml"))
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@config_option
@click.pass_context
def deploy_compose(ctx: click.Context, output: Path, force: bool) -> None:
    """A Docker Compose file for this config: one secret per secret it uses."""
    _write_deployment(ctx, "compose", output, force, None)
