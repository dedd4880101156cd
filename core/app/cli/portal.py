"""``portal``: invite people to the partner portal, list and end their sessions."""

from __future__ import annotations

from typing import Any

import click

from shipcast.app.cli.base import cli, cli_actor, echo_json, open_services, print_table, run_command


@cli.group()
def portal() -> None:
    """The partner portal's people: invitations and sessions."""


@portal.command("invite")
@click.option("--email", required=True, help="Whom the one-time sign-in link is for.")
@click.option("--partner", "partner_id", help="The partner they belong to.")
@click.option("--role", type=click.Choice(["admin", "viewer"]), default="viewer", show_default=True,
              help="A partner's admin changes endpoints and tokens; a viewer reads.")
@click.option("--operator", "as_operator", is_flag=True, help="Invite an operator (every partner, operator pages).")
@click.option("--ttl", type=click.FloatRange(min=60, max=30 * 86400),
              help="Seconds the link works (default SHIPCAST_PORTAL_INVITE_TTL, 24 h).")
@click.option("--json", "as_json", is_flag=True)
def invite(email: str, partner_id: str | None, role: str, as_operator: bool, ttl: float | None,
           as_json: bool) -> None:
    """Print a one-time sign-in link (and email it when SMTP is configured)."""
    if as_operator == bool(partner_id):
        raise click.UsageError("give --partner, or --operator (not both)")
    from shipcast.app.people import invite as make

    async def go() -> dict[str, Any]:
        async with open_services(broker=False) as services:
            return await make(services, email=email, partner_id=partner_id,
                              role="operator" if as_operator else role, invited_by=cli_actor(), ttl=ttl)

    made = run_command(go)
    if as_json:
        echo_json(made)
        return
    whom = "an operator" if as_operator else f"{made['role']} of {partner_id}"
    click.echo(f"Invitation for {made['email']} as {whom}; works once, until {made['expires_at']}"
               f"{' (emailed)' if made['emailed'] else ''}:")
    click.echo(made["link"])


@portal.command("sessions")
@click.option("--partner", "partner_id", help="Only this partner's people.")
@click.option("--json", "as_json", is_flag=True)
def sessions(partner_id: str | None, as_json: bool) -> None:
    """Portal sessions not revoked, newest first."""
    async def go() -> list[dict[str, Any]]:
        async with open_services(broker=False) as services:
            found: list[dict[str, Any]] = await services.store.list_sessions(partner_id)
            return found

    rows = run_command(go)
    if as_json:
        echo_json(rows, default=str)
        return
    print_table(rows, [("id", "ID"), ("email", "EMAIL"), ("partner_id", "PARTNER"), ("role", "ROLE"),
                       ("last_seen", "LAST SEEN")])


@portal.command("revoke")
@click.argument("session_id", required=False)
@click.option("--email", help="Every session of this person.")
@click.option("--partner", "partner_id", help="With --email: of this partner (default: an operator).")
def revoke(session_id: str | None, email: str | None, partner_id: str | None) -> None:
    """End a session (by its id) or every session of a person, at once."""
    if bool(session_id) == bool(email):
        raise click.UsageError("give a SESSION_ID or --email")
    from shipcast.app.audit import record

    async def go() -> int:
        async with open_services(broker=False) as services:
            count: int = await services.store.revoke_sessions(session_id=session_id, email=email,
                                                         partner_id=partner_id)
            if count:
                await record(services, cli_actor(), "session.revoke", partner_id=partner_id,
                             subject=session_id or email, after={"revoked": count})
            return count

    count = run_command(go)
    if not count:
        raise click.ClickException("no live session matched")
    click.echo(f"revoked {count} session{'s' if count != 1 else ''}")
