"""The Grafana dashboard and the Prometheus alert rules ask only for what a node exposes
(deploy/grafana/dashboards/cachegrid.json, deploy/prometheus/alerts.yml, docs/monitoring.md).

Each PromQL expression is cut into tokens; the metric names it selects, the functions it
calls and the label names it uses (in selectors, in by/without/on/ignoring/group_* clauses,
in Grafana legends and alert annotations) are checked against the /metrics pages of the
nodes of a running cluster, parsed by prometheus_client. A name must be a series the page's
families make (a counter ``x`` is ``x_total``; a histogram ``x`` is ``x_bucket``, ``x_sum``
and ``x_count``), and a label must be on that series, or be one Prometheus adds (``job``,
``instance``). The checks are shown to fail on broken copies of the files.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cachegrid.metrics import Counters, Histograms, Metrics
from tests.conftest import Cluster

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/cachegrid.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
MONITORING = ROOT / "docs/monitoring.md"

# Labels Prometheus puts on every series it scrapes, and the series it makes itself.
TARGET_LABELS = frozenset({"job", "instance"})
SCRAPE_SERIES = frozenset({"up"})
# The series names a family of each type makes.
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "unknown": ("",)}  # fmt: skip

# -- PromQL, as far as the names in it go -----------------------------------------------------

TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      | (?P<range>\[[^\]]*\])
      | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
      | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<punct>=~|!~|!=|==|<=|>=|[{}(),=<>+\-*/%^@])""",
    re.VERBOSE,
)
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
MATCHERS = frozenset({"=", "!=", "=~", "!~"})
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                          "count_values", "bottomk", "topk", "quantile", "limitk",
                          "limit_ratio"})  # fmt: skip
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute",
    "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort",
    "sort_desc", "sqrt", "time", "timestamp", "vector", "year", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "start", "end",
}  # fmt: skip
# Grafana's variables: intervals become a duration, the others a plain word.
GRAFANA_INTERVAL = re.compile(r"\$__(?:rate_interval|interval|range)\b")
GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
ANNOTATION_LABEL = re.compile(r"\$labels\.(\w+)")
LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\)")


@dataclass
class References:
    """What one PromQL expression names."""

    metrics: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    selected: set[tuple[str, str]] = field(default_factory=set)  # (metric, label) in a {}
    grouped: set[str] = field(default_factory=set)  # labels of by/without/on/ignoring/group_*


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of each token of ``expr``, spaces left out; ValueError where none fits."""
    found, at = [], 0
    while at < len(expr):
        match = TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"cannot read {expr[at:]!r} in {expr!r}")
        assert match.lastgroup is not None
        if match.lastgroup != "space":
            found.append((match.lastgroup, match.group()))
        at = match.end()
    return found


def references(expr: str) -> References:
    """The metric names, functions and label names ``expr`` uses (Grafana variables
    replaced first)."""
    expr = GRAFANA_VARIABLE.sub("x", GRAFANA_INTERVAL.sub("5m", expr))
    cut, found, at = tokens(expr), References(), 0
    while at < len(cut):
        kind, text = cut[at]
        after = cut[at + 1][1] if at + 1 < len(cut) else ""
        if (kind, text) == ("punct", "{"):
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "name" or text.lower() in KEYWORDS:
            at += 1
        elif text in GROUPING:
            at = _labels_in_parentheses(cut, at + 1, found.grouped)
        elif after == "(" or after in ("by", "without"):  # a call, or `sum by (x) (...)`
            found.functions.add(text)
            at += 1
        else:
            found.metrics.add(text)
            at = _selector(cut, at + 1, text, found.selected)
    return found


def _labels_in_parentheses(cut: list[tuple[str, str]], at: int, into: set[str]) -> int:
    """Adds the names of ``(a, b)`` at ``at`` (if any) to ``into``; the index after it."""
    if at >= len(cut) or cut[at][1] != "(":
        return at  # group_left with no labels
    at += 1
    while cut[at][1] != ")":
        if cut[at][0] == "name":
            into.add(cut[at][1])
        at += 1
    return at + 1


def _selector(cut: list[tuple[str, str]], at: int, metric: str,
              into: set[tuple[str, str]]) -> int:  # fmt: skip
    """Adds the labels matched in ``{...}`` at ``at`` (if any); the index after it."""
    if at >= len(cut) or cut[at][1] != "{":
        return at
    at += 1
    while cut[at][1] != "}":
        if cut[at][0] == "name" and cut[at + 1][1] in MATCHERS:
            into.add((metric, cut[at][1]))
        at += 1
    return at + 1


# -- what the nodes expose ------------------------------------------------------------------


@dataclass
class Exposed:
    """The series names of /metrics pages and the label names each carries."""

    labels: dict[str, set[str]] = field(default_factory=dict)

    def labels_of(self, series: str) -> set[str]:
        return self.labels.get(series, set()) | TARGET_LABELS


def declared_labels() -> dict[str, set[str]]:
    """The label names of each labelled family, as cachegrid.metrics declares them."""
    return {family.name: set(family.label_names) for family in vars(Metrics()).values()
            if isinstance(family, Counters | Histograms)}  # fmt: skip


def exposed(pages: list[str]) -> Exposed:
    """The series every page has, with the label names seen on any page, and those
    Prometheus makes. A labelled family with no series yet (nothing happened that it
    counts) takes its declared labels."""
    declared, per_page = declared_labels(), []
    for page in pages:
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(page):
            names = [family.name + suffix for suffix in SUFFIXES[family.type]]
            for name in names:
                labels.setdefault(name, set())
                if not family.samples:
                    labels[name] |= declared.get(family.name, set())
                    labels[name] |= {"le"} if name.endswith("_bucket") else set()
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
        per_page.append(labels)
    common = set.intersection(*(set(labels) for labels in per_page))
    series = {name: set().union(*(labels[name] for labels in per_page)) for name in common}
    return Exposed(series | {name: set() for name in SCRAPE_SERIES})


# -- what the dashboard and the rules ask for -----------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL expression of the dashboard or the rules."""

    where: str  # a panel, a variable or an alert, for messages
    expr: str
    labels_used: frozenset[str] = frozenset()  # by a legend or an annotation


def all_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict) -> list[Query]:
    """Every panel's queries (with their legends' labels) and every query variable's."""
    found = [Query(f"panel {panel['title']!r}", target["expr"],
                   frozenset(LEGEND_LABEL.findall(target.get("legendFormat", ""))))
             for panel in all_panels(dashboard["panels"])
             for target in panel.get("targets", [])]  # fmt: skip
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = LABEL_VALUES.fullmatch(text)
            assert match, f"variable {variable['name']}: {text!r} is not label_values(...)"
            where = f"variable {variable['name']!r}"
            found.append(Query(where, match[1], frozenset({match[2]})))
    return found


def alert_queries(rules: dict) -> list[Query]:
    """Every alert's expression, with the labels its annotations print."""
    return [Query(f"alert {rule['alert']}", rule["expr"],
                  frozenset(ANNOTATION_LABEL.findall(json.dumps(rule.get("annotations", {})))))
            for group in rules["groups"] for rule in group["rules"]]  # fmt: skip


def problems(queries: list[Query], exposure: Exposed) -> list[str]:
    """Every name the queries use that the nodes do not expose, one message each."""
    return [problem for query in queries for problem in query_problems(query, exposure)]


def query_problems(query: Query, exposure: Exposed) -> list[str]:
    """A function PromQL lacks; a metric no page has; a label a selector matches that its
    metric lacks; a label of a by/on/... clause, a legend or an annotation that some metric
    of the expression lacks (strict: such a label must be on all of them)."""
    refs, where = references(query.expr), query.where
    found = [f"{where}: unknown function {name}()" for name in sorted(refs.functions - FUNCTIONS)]
    for metric in sorted(refs.metrics - set(exposure.labels)):
        near = difflib.get_close_matches(metric, exposure.labels, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        found.append(f"{where}: no series {metric} on /metrics{hint}")
    wanted = set(refs.selected)
    wanted |= {(m, label) for m in refs.metrics for label in refs.grouped | query.labels_used}
    found += [f"{where}: {metric} has no label {label!r}" for metric, label in sorted(wanted)
              if metric in exposure.labels and label not in exposure.labels_of(metric)]  # fmt: skip
    return found


# -- the structure of the files -------------------------------------------------------------

DURATION = re.compile(r"0|(\d+(ms|[smhdwy]))+")
RULE_KEYS = frozenset({"alert", "expr", "for", "keep_firing_for", "labels", "annotations"})
SEVERITIES = frozenset({"critical", "warning"})
DATA_SOURCE = "${DS_PROMETHEUS}"  # the dashboard's data source variable


def rule_problems(rules: dict) -> list[str]:
    """What is wrong with the structure of an alert rules file."""
    found = [] if set(rules) == {"groups"} else [f"top-level keys {sorted(rules)}"]
    names: list[str] = []
    for group in rules.get("groups") or []:
        if not group.get("name") or not group.get("rules"):
            found.append(f"group {group.get('name')!r}: a name and rules are needed")
        for rule in group.get("rules") or []:
            found += _rule_problems(rule)
            names.append(rule.get("alert", ""))
    found += [f"alert {name} appears twice" for name in sorted(set(names))
              if names.count(name) > 1]  # fmt: skip
    return found if names else [*found, "no rules"]


def _rule_problems(rule: dict) -> list[str]:
    """What is wrong with one rule."""
    name, found = rule.get("alert", "?"), []
    if set(rule) - RULE_KEYS or not {"alert", "expr", "for"} <= set(rule):
        found.append(f"alert {name}: keys {sorted(rule)}")
    if not re.fullmatch(r"Cachegrid[A-Z][A-Za-z0-9]+", str(name)):
        found.append(f"alert {name}: not named CachegridSomething")
    if not DURATION.fullmatch(str(rule.get("for"))):
        found.append(f"alert {name}: `for` {rule.get('for')!r} is not a duration")
    if (rule.get("labels") or {}).get("severity") not in SEVERITIES:
        found.append(f"alert {name}: labels.severity must be one of {sorted(SEVERITIES)}")
    annotations = rule.get("annotations") or {}
    if not str(annotations.get("summary", "")).strip():
        found.append(f"alert {name}: no annotations.summary")
    if annotations.get("runbook") != f"docs/monitoring.md#{str(name).lower()}":
        found.append(f"alert {name}: annotations.runbook must name its docs/monitoring.md section")
    try:
        references(str(rule.get("expr", "")))
    except ValueError as error:
        found.append(f"alert {name}: {error}")
    return found


def dashboard_problems(dashboard: dict) -> list[str]:
    """What is wrong with the structure of the dashboard: ids, layout, data sources."""
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    found = [] if len(ids) == len(set(ids)) else ["panel ids repeat"]
    if dashboard.get("schemaVersion", 0) < 36 or dashboard.get("uid") != "cachegrid":
        found.append("schemaVersion must be at least 36 (Grafana 9), uid cachegrid")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables.get("DS_PROMETHEUS", {})
    if (source.get("type"), source.get("query")) != ("datasource", "prometheus"):
        found.append("no DS_PROMETHEUS data source variable")
    for panel in panels:
        position = panel["gridPos"]
        if position["x"] + position["w"] > 24:
            found.append(f"panel {panel['title']!r} is wider than the dashboard")
        if panel["type"] == "row":
            continue
        sources = [panel, *panel.get("targets", [])]
        if {source.get("datasource", {}).get("uid") for source in sources} != {DATA_SOURCE}:
            found.append(f"panel {panel['title']!r} does not query ${{DS_PROMETHEUS}}")
        if not panel.get("description"):
            found.append(f"panel {panel['title']!r} has no description")
    return found


# -- unit checks: the tools, and that they catch what is wrong ------------------------------


def test_references_skip_functions_keywords_and_label_names() -> None:
    """Only metric names count as metrics: not functions, aggregations, by/on clauses, label
    names or values, durations, numbers or Grafana variables."""
    found = references(
        "histogram_quantile(0.99, sum by (le, route) (rate(cachegrid_request_seconds_bucket"
        '{job=~"$job", route!="GET /metrics"}[$__rate_interval]))) > bool 0.5'
    )
    assert found.metrics == {"cachegrid_request_seconds_bucket"}
    assert found.functions == {"histogram_quantile", "sum", "rate"}
    assert found.selected == {("cachegrid_request_seconds_bucket", "job"),
                              ("cachegrid_request_seconds_bucket", "route")}  # fmt: skip
    assert found.grouped == {"le", "route"}
    joined = references("a < on (job) group_left () max(b offset 5m) without (x) and c")
    assert (joined.metrics, joined.grouped) == ({"a", "b", "c"}, {"job", "x"})


def test_references_refuse_what_they_cannot_read() -> None:
    """A selector with no metric name, or a character PromQL has not, is an error rather
    than a silent pass."""
    with pytest.raises(ValueError, match="without a metric name"):
        references('{__name__="cachegrid_ring_epoch"}')
    with pytest.raises(ValueError, match="cannot read"):
        references("cachegrid_ring_epoch ; 1")


def test_the_alert_rules_are_well_formed() -> None:
    """Groups of rules, each with a CachegridName, an expression, a `for` duration, a
    severity, a summary and its runbook section; and a broken copy is caught."""
    rules = yaml.safe_load(ALERTS.read_text())
    assert rule_problems(rules) == []
    broken = copy.deepcopy(rules)
    rule = broken["groups"][0]["rules"][0]
    del rule["labels"]["severity"]
    rule["for"] = "two minutes"
    broken["groups"][1]["rules"].append(broken["groups"][1]["rules"][0])
    found = rule_problems(broken)
    assert len(found) == 3, found
    assert rule_problems({"groups": []}) == ["no rules"]


def test_every_alert_is_explained_in_the_monitoring_doc() -> None:
    """docs/monitoring.md has a section titled with each alert's name (what its runbook
    annotation points at)."""
    headings = set(re.findall(r"^#+ (\S+)\s*$", MONITORING.read_text(), re.MULTILINE))
    alerts = {
        q.where.removeprefix("alert ") for q in alert_queries(yaml.safe_load(ALERTS.read_text()))
    }
    assert alerts - headings == set()


def test_the_dashboard_is_well_formed() -> None:
    """Unique panel ids, panels inside the grid, every query through the DS_PROMETHEUS data
    source variable, a description on every panel; and a broken copy is caught."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard_problems(dashboard) == []
    broken = copy.deepcopy(dashboard)
    broken["panels"][2]["id"] = broken["panels"][1]["id"]
    broken["panels"][3]["targets"][0]["datasource"] = {"uid": "prometheus"}
    assert len(dashboard_problems(broken)) == 2


# -- against a live cluster -----------------------------------------------------------------

KEY = "dashboards-hot"


async def put(http: aiohttp.ClientSession, url: str, value: int) -> str:
    """PUT ``KEY`` through ``url``; the id of its owner."""
    async with http.put(f"{url}/v1/kv/{KEY}", json={"value": value}) as response:
        assert response.status == 200, await response.text()
        return response.headers["X-Cachegrid-Node"]


async def until_replica_hit(http: aiohttp.ClientSession, url: str) -> None:
    """Read ``KEY`` through ``url`` (not its owner) until a copy answers (X-Cache: replica):
    reads faster than node.read_lease_threshold make it hot."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with http.get(f"{url}/v1/kv/{KEY}") as response:
            assert response.status == 200
            if response.headers.get("X-Cache") == "replica":
                return
    raise AssertionError(f"no replica hit through {url}")


async def exercise_and_scrape(urls: list[str]) -> list[str]:
    """Traffic that makes the labelled series exist, then every node's /metrics: a write
    through some node, a hit and a miss at the owner, a hot key copied to another node, and
    a write at the owner that waits for that copy to be dropped."""
    async with aiohttp.ClientSession() as http:
        by_id = {f"node{i}": url for i, url in enumerate(urls)}
        owner = by_id[await put(http, urls[0], 1)]
        for key in (KEY, "dashboards-absent"):
            async with http.get(f"{owner}/v1/kv/{key}") as response:
                await response.read()
        await until_replica_hit(http, next(url for url in urls if url != owner))
        await put(http, owner, 2)
        pages = []
        for url in urls:
            async with http.get(f"{url}/metrics") as response:
                pages.append(await response.text())
    await asyncio.sleep(0.01)  # transports finish closing (see the `http` fixture)
    return pages


@pytest.fixture(scope="module")
def pages(cluster: Cluster) -> list[str]:
    """The /metrics page of every node of the module's cluster, after some traffic."""
    return asyncio.run(exercise_and_scrape(cluster.urls))


def test_the_dashboard_queries_only_what_nodes_expose(pages: list[str]) -> None:
    """Every metric, function and label of every panel and variable exists on the nodes."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) > 40
    assert problems(queries, exposed(pages)) == []


def test_the_alert_rules_use_only_what_nodes_expose(pages: list[str]) -> None:
    """Every metric, function and label of every alert rule exists on the nodes."""
    queries = alert_queries(yaml.safe_load(ALERTS.read_text()))
    assert len(queries) >= 20
    assert problems(queries, exposed(pages)) == []


def test_a_broken_dashboard_is_caught(pages: list[str]) -> None:
    """A copy of the dashboard with a misspelt metric, a bare histogram name, a gauge with a
    counter's suffix, a label the series lacks and an unknown function fails, each named."""
    dashboard = json.loads(DASHBOARD.read_text())
    broken = copy.deepcopy(dashboard)
    targets = [t for p in all_panels(broken["panels"]) for t in p.get("targets", [])]
    edits = [("cachegrid_ring_epoch", "cachegrid_ring_epoc"),
             ("cachegrid_request_seconds_bucket", "cachegrid_request_seconds"),
             ("cachegrid_cache_entries", "cachegrid_cache_entries_total"),
             ("by (le, op)", "by (le, operation)"), ("rate(", "rates(")]  # fmt: skip
    for old, new in edits:
        target = next(t for t in targets if old in t["expr"])
        target["expr"] = target["expr"].replace(old, new, 1)
    found = "\n".join(problems(dashboard_queries(broken), exposed(pages)))
    for expected in ("no series cachegrid_ring_epoc on /metrics (did you mean "
                     "cachegrid_ring_epoch?)", "no series cachegrid_request_seconds on",
                     "no series cachegrid_cache_entries_total", "has no label 'operation'",
                     "unknown function rates()"):  # fmt: skip
        assert expected in found, found


def test_a_broken_alert_rule_is_caught(pages: list[str]) -> None:
    """A rule selecting a label its series lacks, or printing one in its summary, fails."""
    rules = yaml.safe_load(ALERTS.read_text())
    rule = rules["groups"][0]["rules"][0]
    rule["expr"] = 'cachegrid_store_replicas_up{replica="redis1"} < 3'
    rule["annotations"]["summary"] = "{{ $labels.node }} is down"
    found = problems(alert_queries(rules), exposed(pages))
    assert found == [f"alert {rule['alert']}: cachegrid_store_replicas_up has no label "
                     f"{label!r}" for label in ("node", "replica")]  # fmt: skip


def test_the_monitoring_doc_lists_every_metric(pages: list[str]) -> None:
    """docs/monitoring.md names every series family a node exposes, in its metrics table."""
    doc = MONITORING.read_text()
    families = {family.name + ("_total" if family.type == "counter" else "")
                for family in text_string_to_metric_families(pages[0])}  # fmt: skip
    assert {name for name in families if f"`{name}`" not in doc} == set()
