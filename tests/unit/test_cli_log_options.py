"""`--access-log [FORMAT]` and `--log-format` as `up` and `dev` parse them (click, no node started)."""

from __future__ import annotations

import click
import pytest

from anycore.cli.main import cli


def parse(command: str, *args: str) -> dict[str, object]:
    with cli.commands[command].make_context(command, list(args)) as ctx:  # type: ignore[union-attr]
        return dict(ctx.params)


@pytest.mark.parametrize("command, path", [("up", "svc"), ("dev", "svc")])
def test_access_log_alone_is_logfmt_a_format_is_taken_and_absent_is_off(command: str, path: str) -> None:
    assert parse(command, path)["access_log"] is None
    assert parse(command, path, "--access-log")["access_log"] == "logfmt"
    assert parse(command, path, "--access-log", "--listen", "127.0.0.1:0")["access_log"] == "logfmt"
    for fmt in ("logfmt", "json", "combined"):
        assert parse(command, path, "--access-log", fmt)["access_log"] == fmt
        assert parse(command, path, f"--access-log={fmt}")["access_log"] == fmt
    params = parse(command, path, "--log-format", "json")
    assert params["log_format"] == "json" and parse(command, path)["log_format"] == "logfmt"


def test_a_path_after_a_bare_access_log_gets_a_message_saying_how_to_write_it() -> None:
    with pytest.raises(click.BadParameter, match="put service paths before --access-log, or write --access-log=logfmt"):
        parse("up", "--access-log", "./shop")
    with pytest.raises(click.BadParameter):
        parse("up", "svc", "--log-format", "combined")  # combined is for access lines only
