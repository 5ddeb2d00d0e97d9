"""The log formatters (pure) and NodeLog's formats, watchers and rings, in memory."""

from __future__ import annotations

import calendar
import datetime
import io
import json
import re

import pytest

from anycore.errors import ConfigError
from anycore.log import (ACCESS_FORMATS, EVENT_FORMATS, LogFormat, NodeLog, clf_time, combined_line, json_line,
                         logfmt_line, output_line, parse_format, timestamp)

NOW = calendar.timegm((2026, 12, 2, 3, 48, 35)) + 0.1234  # 2026-12-02T03:48:35.123Z

# The combined format as the Apache docs define it (mod_log_config: LogFormat "%h %l %u %t
# \"%r\" %>s %b \"%{Referer}i\" \"%{User-agent}i\"" combined), as a regex: %t is
# [day/month/year:hour:minute:second zone], a quoted field holds no bare '"'.
COMBINED = re.compile(
    r'^(?P<host>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<size>\d+|-) '
    r'"(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)"$')


def test_timestamp_is_utc_with_milliseconds() -> None:
    assert timestamp(NOW) == "2026-12-02T03:48:35.123Z"


def test_logfmt_quotes_what_would_split_a_field_and_skips_none() -> None:
    line = logfmt_line(NOW, "request", "shop", {"path": "/a b", "q": 'say "x"', "empty": "", "gone": None, "n": 3})
    assert line == 'ts=2026-12-02T03:48:35.123Z event=request service=shop path="/a b" q="say \\"x\\"" empty="" n=3'
    assert logfmt_line(NOW, "node.started", "", {}) == "ts=2026-12-02T03:48:35.123Z event=node.started"


def test_json_is_one_object_whose_fixed_keys_fields_cannot_override() -> None:
    line = json_line(NOW, "worker.exited", "shop", {"worker": 2, "event": "forged", "gone": None, "obj": object})
    record = json.loads(line)
    assert "\n" not in line
    assert record["ts"] == "2026-12-02T03:48:35.123Z" and record["event"] == "worker.exited"
    assert record["service"] == "shop" and record["worker"] == 2 and "gone" not in record
    assert isinstance(record["obj"], str)  # anything not JSON is its str()
    assert "service" not in json.loads(json_line(NOW, "node.started", "", {}))


def test_output_lines_carry_the_time_and_their_tag_in_both_formats() -> None:
    assert output_line(LogFormat.LOGFMT, NOW, "shop", "shop@3f9a worker 1", "hello") == \
        "ts=2026-12-02T03:48:35.123Z [shop@3f9a worker 1] hello"
    record = json.loads(output_line(LogFormat.JSON, NOW, "shop", "shop@3f9a worker 1", 'a "quoted"\tline'))
    assert record == {"ts": "2026-12-02T03:48:35.123Z", "event": "output", "service": "shop",
                      "tag": "shop@3f9a worker 1", "line": 'a "quoted"\tline'}


def test_clf_time_reads_back_as_the_same_instant() -> None:
    text = clf_time(NOW)
    parsed = datetime.datetime.strptime(text, "[%d/%b/%Y:%H:%M:%S %z]")
    assert parsed.timestamp() == int(NOW)


def test_combined_lines_match_the_apache_regex_and_escape_like_mod_log_config() -> None:
    line = combined_line("10.0.0.1", NOW, b"GET /a?b=1 HTTP/1.1", 200, 5, b"http://ref/", b"curl/8.0")
    match = COMBINED.match(line)
    assert match is not None, line
    assert match.group("host", "ident", "user", "request", "status", "size", "referer", "agent") == (
        "10.0.0.1", "-", "-", "GET /a?b=1 HTTP/1.1", "200", "5", "http://ref/", "curl/8.0")
    # No size, no headers, no client: '-'. Quotes, backslashes, tabs and bytes past ASCII escaped.
    line = combined_line(None, NOW, b"HEAD / HTTP/1.0", 304, 0, None, b'say "hi" \\ \t caf\xc3\xa9')
    match = COMBINED.match(line)
    assert match is not None, line
    assert match.group("host", "size", "referer") == ("-", "-", "-")
    assert match.group("agent") == 'say \\"hi\\" \\\\ \\t caf\\xc3\\xa9'


def test_formats_are_checked_with_a_message_naming_the_choices() -> None:
    assert parse_format("json", EVENT_FORMATS, "--log-format") is LogFormat.JSON
    assert parse_format("combined", ACCESS_FORMATS, "--access-log") is LogFormat.COMBINED
    with pytest.raises(ConfigError, match="'combined' is not a log format here; use one of: logfmt, json"):
        NodeLog(io.StringIO(), format="combined")
    with pytest.raises(ConfigError, match="--access-log 'xml'"):
        parse_format("xml", ACCESS_FORMATS, "--access-log")


def test_node_log_in_json_writes_json_rings_it_and_watchers_get_fields() -> None:
    stream = io.StringIO()
    log = NodeLog(stream, format="json")
    seen: list[tuple[str, str, dict[str, object]]] = []
    log.watchers.append(lambda now, event, service, fields: seen.append((event, service, fields)))
    log.event("worker.exited", "shop", worker=1, cause="oom")
    log.output("shop", "shop@1 worker 1", "printed")
    log.access(LogFormat.COMBINED, "shop", {"status": 200, "request_id": "r1"}, 'x - - [..] "GET / HTTP/1.1" 200 - "-" "-"')
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["event"] for line in lines[:2]] == ["worker.exited", "output"]
    assert lines[2].startswith("x - - ")  # the access log keeps its own format
    assert log.tail("shop", 10) == lines
    # Structured fields for events and access records, never for output.
    assert seen == [("worker.exited", "shop", {"worker": 1, "cause": "oom"}),
                    ("request", "shop", {"status": 200, "request_id": "r1"})]


def test_access_in_logfmt_and_json() -> None:
    stream = io.StringIO()
    log = NodeLog(stream)
    log.access(LogFormat.LOGFMT, "shop", {"status": 200, "request_id": "r1"})
    log.access(LogFormat.JSON, "shop", {"status": 200, "request_id": "r1"})
    first, second = stream.getvalue().splitlines()
    assert re.fullmatch(r"ts=\S+ event=request service=shop status=200 request_id=r1", first)
    assert json.loads(second)["request_id"] == "r1"
