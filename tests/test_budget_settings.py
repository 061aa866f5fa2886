"""Budget settings: `[power.budget]` read from TOML, refused by field name, assembled into a combiner whose
sources run end to end (a carbon API outage included, against a loopback fake)."""

from __future__ import annotations

import ast
import datetime
import json
import time
import tomllib
from pathlib import Path

import pytest
from fake_budget_api import FakeBudgetApi, Reply, recorded

from controller.budget import assemble, settings
from controller.budget.api_http import parse_time_s
from controller.config_loader import ConfigError

T0 = parse_time_s("2026-12-01T15:00:00Z", "test")
TOML = """
[power.budget]
safe_budget_w = 1200
ttl_s = 600

[[power.budget.sources]]
kind = "fixed"
budget_w = 2600

[[power.budget.sources]]
kind = "schedule"
name = "office-hours"
time_zone = "Europe/Berlin"
default_budget_w = 3000
rules = [{days = ["mon", "tue", "wed", "thu", "fri"], start = "08:00", end = "20:00", budget_w = 2000}]

[[power.budget.sources]]
kind = "electricitymaps"
name = "grid"
zone = "DE"
url = "URL"
timeout_s = 1.0
curve = [[100, 3000], [500, 1000]]
lead_s = 3600

[[power.budget.sources]]
kind = "demand_response"
path = "SIGNAL"
"""


def table(text: str = TOML, **replace: str) -> dict[str, object]:
    """The TOML with each replacement made; the API's URL (`URL`) the public one unless one is given."""
    for old, new in {"URL": "https://api.electricitymap.org", **replace}.items():
        assert old in text, old
        text = text.replace(old, new)
    doc = tomllib.loads(text)["power"]["budget"]
    assert isinstance(doc, dict)
    return doc


def test_the_table_assembles_into_a_combiner_that_survives_a_carbon_api_outage(tmp_path: Path) -> None:
    signal = tmp_path / "signal.json"
    routes = {"/v3/carbon-intensity/latest": [Reply(200, recorded("em_latest_DE.json")), Reply(503, b"")],
              "/v3/carbon-intensity/forecast": [Reply(200, recorded("em_forecast_DE.json")), Reply(503, b"")]}
    with FakeBudgetApi(routes) as api:
        parsed = settings.budget_settings(table(URL=api.url, SIGNAL=str(signal)))
        assert [name for name, _ in parsed.sources] == ["fixed", "office-hours", "grid", "demand_response"]
        combiner = assemble.combiner(parsed, {"ELECTRICITYMAPS_TOKEN": "t0k"}, wait_s=30.0)  # the first waited for
        first = combiner.step(T0 + 1800.0)  # Tuesday 16:30 in Berlin
        assert (first.source, round(first.budget_w)) == ("grid", 1950)
        signal.write_text(json.dumps({"budget_w": 900, "deadline": "2026-12-01T15:40:00Z"}))
        assert combiner.step(T0 + 1801.0).source == "demand_response"
        assert combiner.step(T0 + 2699.0).source == "grid"  # the signal's deadline passed; the cache still serves
        held = combiner.step(T0 + 2700.0)  # the API answers 503 from the second refresh on: taken a step later
        assert (held.source, round(held.budget_w)) == ("grid", 1950)  # the points held meanwhile
        for t in range(2701, 2720):
            time.sleep(0.05)  # the refresh's answer comes in its thread
            if "held" in (held := combiner.step(T0 + t)).why:
                break
        assert (held.source, round(held.budget_w)) == ("grid", 1950) and "held" in held.why
        # its age counts from the last answer, whatever retries are in flight meanwhile (the held points followed)
        late = combiner.step(T0 + 2699.0 + 600.0)
        assert round(late.budget_w) == 1950 and "(held 600 s of 600 s: electricitymaps DE latest: HTTP 503" in late.why
        fallback = combiner.step(T0 + 2699.0 + 601.0)
        assert (fallback.source, fallback.budget_w) == ("grid", 1200.0) and "HTTP 503" in fallback.why
    assert {r.headers["auth-token"] for r in api.requests} == {"t0k"}


@pytest.mark.parametrize(("replace", "field", "reason"), [
    ({'kind = "fixed"': 'kind = "solar"'}, "power.budget.sources[0].kind", "unknown source 'solar'"),
    ({"[[100, 3000], [500, 1000]]": "[[100, 1000], [500, 3000]]"}, "power.budget.sources[2].curve[1]",
      "not monotonic"),
    ({"Europe/Berlin": "Mars/Olympus"}, "power.budget.sources[1].time_zone", "unknown time zone"),
    # a directory of zones, and a name past the file system's: OSErrors that ended a reload with a traceback
    ({"Europe/Berlin": "America"}, "power.budget.sources[1].time_zone", "unknown time zone 'America'"),
    ({"Europe/Berlin": "E" * 300}, "power.budget.sources[1].time_zone", r"unknown time zone 'EEE.*\(302 characters"),
    ({'kind = "fixed"': "kind = []"}, "power.budget.sources[0].kind", r"unknown source \[\]"),
    ({'kind = "fixed"': "kind = { a = 1 }"}, "power.budget.sources[0].kind", "unknown source {'a': 1}"),
    ({'"fri"]': '"fri", "fun"]'}, "power.budget.sources[1].rules[0].days[5]", "must be one of"),
    ({'end = "20:00"': 'end = "07:00"'}, "power.budget.sources[1].rules[0].end", "must be after start"),
    ({'start = "08:00"': 'start = "8am"'}, "power.budget.sources[1].rules[0].start", "not HH:MM"),
    # a TOML time unquoted was quoted as Python's repr, "got datetime.time(8, 0)"
    ({'start = "08:00"': "start = 08:00:00"}, "power.budget.sources[1].rules[0].start",
     'must be a string, got the TOML time 08:00:00: write it in quotes, "08:00"'),
    # digits Python's int() refuses (superscripts: its own words) or reads (Arabic-Indic: a time nobody wrote)
    ({'start = "08:00"': 'start = "\u00b9\u00b2:00"'}, "power.budget.sources[1].rules[0].start", "is not HH:MM"),
    ({'start = "08:00"': 'start = "\u0660\u0668:00"'}, "power.budget.sources[1].rules[0].start", "is not HH:MM"),
    # each read of a schedule takes time that grows with the square of its rules: 3,000 took 1.2 s every second
    ({'budget_w = 2000}]': "budget_w = 2000}" + ', {days = ["sun"], start = "01:00", end = "02:00", budget_w = 9}' * 400
      + "]"}, "power.budget.sources[1].rules", "401 rules: at most 400"),
    ({'name = "grid"': 'name = "office-hours"'}, "power.budget.sources[2].name", "names another source"),
    ({"safe_budget_w = 1200": "safe_budget_w = 0"}, "power.budget.safe_budget_w", "must be a finite number > 0"),
    # a trial: a fixed source's and a schedule's budgets took 1e300 W where every other budget stops at 1e8
    ({'budget_w = 2000}]': "budget_w = 1e300}]"}, "power.budget.sources[1].rules[0].budget_w",
     r"must be in \(0, 1e\+08\], got 1e\+300"),
    ({"budget_w = 2600": "budget_w = 1e300"}, "power.budget.sources[0].budget_w", r"must be in \(0, 1e\+08\]"),
    ({"default_budget_w = 3000": "default_budget_w = 1e300"}, "power.budget.sources[1].default_budget_w",
     r"must be in \(0, 1e\+08\]"),
    ({"ttl_s = 600": "ttl = 600"}, "power.budget.ttl", "unknown key"),
    ({"lead_s = 3600": "lead_s = -1"}, "power.budget.sources[2].lead_s", ">= 0"),
    ({"lead_s = 3600": "lead_s = 3600\nrefresh_s = 1e12"}, "power.budget.sources[2].refresh_s",
     r"must be in \(0, 86400\]"),
    ({"zone = \"DE\"": "zone = \"\""}, "power.budget.sources[2].zone", "must not be empty"),
    # a request that never times out (1e308 overflowed the thread's wait) held the config's budget while it hung
    ({"timeout_s = 1.0": "timeout_s = 1e308"}, "power.budget.sources[2].timeout_s", r"must be in \(0, 60\]"),
    # a broken signal file read again only after retry_s: a signal the endpoint accepted meanwhile never applied
    ({'path = "SIGNAL"': 'path = "SIGNAL"\nretry_s = 1e308'}, "power.budget.sources[3].retry_s",
     r"must be in \(0, 60\]"),
    # a config (a PowerPolicy, in a cluster) must not send another secret of the process anywhere it names
    ({"zone = \"DE\"": "zone = \"DE\"\ntoken_env = \"KUBECONFIG\""}, "power.budget.sources[2].token_env",
     "must name a variable starting with ELECTRICITYMAPS_ or WATTSCALE_, got 'KUBECONFIG'"),
    ({"URL": "http://10.0.0.9:8080"}, "power.budget.sources[2].url",
     r"must be an https URL \(http only to a loopback address\), got 'http://10.0.0.9:8080'"),
    ({"URL": "https://[abc"}, "power.budget.sources[2].url", "must be an https URL"),
    ({"URL": "https://api.example:99999"}, "power.budget.sources[2].url", "must be an https URL"),
])
def test_a_bad_table_is_refused_naming_the_field(replace: dict[str, str], field: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        settings.budget_settings(table(**replace))
    assert caught.value.where == field


def test_a_csv_source_needs_a_path() -> None:
    csv = {"kind": "carbon_csv", "path": "", "curve": [[100, 3000]]}
    with pytest.raises(ConfigError) as caught:
        settings.budget_settings({"safe_budget_w": 1000, "sources": [csv]})
    assert caught.value.where == "power.budget.sources[0].path"


def test_a_misspelled_sources_is_named_as_an_unknown_key() -> None:
    """`[[power.budget.source]]` read as "power.budget.sources: needs a source besides demand response"."""
    with pytest.raises(ConfigError, match=r"unknown key \(expected one of \['safe_budget_w', 'sources', 'ttl_s'\]\)") \
            as caught:
        settings.budget_settings({"safe_budget_w": 1000, "source": [{"kind": "fixed", "budget_w": 900}]})
    assert caught.value.where == "power.budget.source"


def test_demand_response_alone_is_refused() -> None:
    only_dr = {"safe_budget_w": 1000, "sources": [{"kind": "demand_response", "path": "s.json"}]}
    with pytest.raises(ConfigError, match=r'sets no budget while no signal is in force: add one for the rest of the '
                       r'time, e\.g\. \{ kind = "fixed", budget_w = \.\.\. \}') as caught:
        settings.budget_settings(only_dr)
    assert caught.value.where == "power.budget.sources"


def test_watttime_needs_a_horizon_covering_its_lead_and_its_secrets() -> None:
    wt = {"kind": "watttime", "region": "CAISO_NORTH", "curve": [[100, 3000]], "lead_s": 3 * 3600}
    with pytest.raises(ConfigError) as caught:
        settings.budget_settings({"safe_budget_w": 1000, "sources": [wt]})
    assert caught.value.where == "power.budget.sources[0].horizon_hours"
    parsed = settings.budget_settings({"safe_budget_w": 1000, "sources": [{**wt, "horizon_hours": 3}]})
    with pytest.raises(ConfigError) as missing:
        assemble.combiner(parsed, {"WATTTIME_USERNAME": "ann"})
    assert missing.value.where == "power.budget.sources[0].password_env"


def test_every_settings_field_has_a_docstring() -> None:
    tree = ast.parse(Path(settings.__file__).read_text())
    undocumented = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for i, stmt in enumerate(cls.body):
            if isinstance(stmt, ast.AnnAssign):
                after = cls.body[i + 1] if i + 1 < len(cls.body) else None
                if not (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
                    undocumented.append(f"{cls.name}.{ast.unparse(stmt.target)}")
    assert undocumented == []


def test_a_slow_carbon_api_holds_no_other_source_back(tmp_path: Path) -> None:
    """The budget thread steps the sources one after another, and an API answering after 40 s held a demand-response
    signal back all that time. Its fetch now runs in a thread of its own: the step that asks waits half a second, the
    source sets no limit until its first answer (as the daemon's start had waited for it: not the safe budget), the
    signal applies on time, and the answer is taken at a later step; a pending answer is no failure."""
    signal, failed = tmp_path / "signal.json", []
    routes = {f"/v3/carbon-intensity/{kind}": [Reply(200, recorded(f"em_{kind}_DE.json"), delay_s=1.5)]
              for kind in ("latest", "forecast")}
    with FakeBudgetApi(routes) as api:
        bounds = {"timeout_s = 1.0": "timeout_s = 9"}
        parsed = settings.budget_settings(table(URL=api.url, SIGNAL=str(signal), **bounds))
        combiner = assemble.combiner(parsed, {"ELECTRICITYMAPS_TOKEN": "t0k"}, failed=lambda: failed.append(1))
        started = time.monotonic()
        first = combiner.step(T0 + 1800.0)
        assert time.monotonic() - started < 1.4 and (first.source, first.budget_w) == ("office-hours", 2000.0)
        signal.write_text(json.dumps({"budget_w": 900, "deadline": "2026-12-01T15:40:00Z"}))
        second = combiner.step(T0 + 1801.0)
        assert time.monotonic() - started < 1.4 and (second.source, second.budget_w) == ("demand_response", 900.0)
        assert combiner.states["grid"].pending and combiner.states["grid"].error == ""
        deadline = time.monotonic() + 30.0
        while combiner.states["grid"].reading is None and time.monotonic() < deadline:
            time.sleep(0.05)
            combiner.step(T0 + 1801.0 + (time.monotonic() - started))
        grid = combiner.states["grid"]
        assert grid.reading is not None and not grid.pending and grid.error == "" and failed == []


def test_a_large_carbon_csv_holds_no_demand_response_signal_back(tmp_path: Path) -> None:
    """The CSV was parsed in the budget thread's step, the sources one after another: a 16-MB one held a signal to
    cut the site's draw back 4-6 s (a trial). It is read in a thread of its own now, as the carbon APIs are."""
    csv = tmp_path / "grid.csv"
    head = "Datetime (UTC),Carbon intensity gCO₂eq/kWh (Life cycle)\n"
    start = datetime.datetime(2010, 1, 1)
    rows = (f"{start + datetime.timedelta(hours=i):%Y-%m-%d %H:%M:%S},{200 + i % 50}\n" for i in range(150_000))
    csv.write_text(head + "".join(rows))  # 17 years by the hour, 4 MB
    signal = tmp_path / "signal.json"
    signal.write_text(json.dumps({"budget_w": 900, "deadline": "2030-01-01T00:00:00Z"}))
    text = f"""[power.budget]
safe_budget_w = 1000

[[power.budget.sources]]
kind = "carbon_csv"
path = "{csv}"
curve = [[100, 3000], [500, 1000]]

[[power.budget.sources]]
kind = "demand_response"
path = "{signal}"
"""
    parsed = settings.budget_settings(tomllib.loads(text)["power"]["budget"])
    combiner = assemble.combiner(parsed, {}, wait_s=0.05)
    started = time.monotonic()
    first = combiner.step(T0)
    assert time.monotonic() - started < 0.5 and (first.source, first.budget_w) == ("demand_response", 900.0)
