#!/usr/bin/env python3
"""Generate the alert runbook (``docs/runbook.md``) from the alert rules (``dashboards/alerts.yml``).

Run ``python3 dashboards/runbook.py`` to write it, ``python3 dashboards/runbook.py --check`` to fail when the
committed file differs from what this script makes, or when an alert's ``runbook_url`` is not this page's
section for it. The rules are the one source: each section shows the alert's severity, its expression and
hold time, and its summary, description and runbook annotations as written there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "dashboards" / "alerts.yml"
OUTPUT = ROOT / "docs" / "runbook.md"
# Where the docs are published: runbook_url in alerts.yml is RUNBOOK_BASE#<alert name in lower case>. Change
# it here and in alerts.yml together if you publish them elsewhere (the check below keeps them in step).
RUNBOOK_BASE = "https://github.com/mailflow-probe/mailflow-probe/blob/main/docs/runbook.md"


def alerts(text: str) -> list[dict[str, Any]]:
    """Return the alerting rules of a rule file, in file order."""
    doc = yaml.safe_load(text)
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def anchor(alert: str) -> str:
    """Return the section anchor of an alert (GitHub's: the heading in lower case)."""
    return alert.lower()


def section(rule: dict[str, Any]) -> str:
    """Return the runbook section of one alert."""
    notes = rule["annotations"]
    held = f", held for {rule['for']}" if "for" in rule else ""
    return "\n".join([
        f"## {rule['alert']}",
        "",
        f"Severity **{rule['labels']['severity']}**{held}. {notes['summary']}",
        "",
        f"{notes['description']}",
        "",
        "```promql",
        rule["expr"].rstrip("\n"),
        "```",
        "",
        f"**What to look at.** {notes['runbook']}",
        "",
    ])


def render(text: str) -> str:
    """Return the runbook page for a rule file's text."""
    rules = alerts(text)
    index = "\n".join(f"- [{rule['alert']}](#{anchor(rule['alert'])})" for rule in rules)
    head = ("# Alert runbook\n\n"
            "Generated from `dashboards/alerts.yml` by `dashboards/runbook.py`; edit the rules, not this page. "
            "Each alert's `runbook_url` points at its section here. `{{ $labels.route }}` and the like are "
            "filled in by Prometheus when the alert fires.\n\n" + index + "\n\n")
    return head + "\n".join(section(rule) for rule in rules)


def url_problems(text: str) -> list[str]:
    """Return what is wrong with the rules' runbook_url annotations (each must point at its own section)."""
    problems = []
    for rule in alerts(text):
        expected = f"{RUNBOOK_BASE}#{anchor(rule['alert'])}"
        found = rule["annotations"].get("runbook_url")
        if found != expected:
            problems.append(f"{rule['alert']}: runbook_url is {found!r}, expected {expected!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Write docs/runbook.md, or with --check compare it with the committed file and check the URLs."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed page or a runbook_url is off")
    args = parser.parse_args(argv)
    text = RULES.read_text(encoding="utf-8")
    problems = url_problems(text)
    page = render(text)
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != page:
            problems.append(f"{OUTPUT.relative_to(ROOT)} is out of date: run python3 dashboards/runbook.py")
    else:
        OUTPUT.write_text(page, encoding="utf-8")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
