#!/usr/bin/env python3
"""Generate the PrometheusRule of the Kubernetes manifests from the alert rules, their one source.

``python3 deploy/kubernetes/generate.py`` writes ``deploy/kubernetes/prometheusrule.yaml`` from
``dashboards/alerts.yml`` (the groups, rules, expressions, labels and annotations as they are there);
``--check`` fails when the committed file differs from what it makes. Edit the alerts, never the output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "dashboards" / "alerts.yml"
OUTPUT = Path(__file__).resolve().parent / "prometheusrule.yaml"
HEADER = ("# Generated from dashboards/alerts.yml by deploy/kubernetes/generate.py: edit the alerts, not this file.\n"
          "# prometheus-operator loads it when its ruleSelector matches its labels (add them in kustomization.yaml)\n")


class _Literal(str):
    """A string written as a YAML literal block (``|``): a multi-line expression stays readable."""


def _literal(dumper: yaml.SafeDumper, text: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(text), style="|")


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as literal blocks."""


_Dumper.add_representer(_Literal, _literal)


def _blocks(value: Any) -> Any:
    """Return ``value`` with every multi-line string marked to be written as a literal block."""
    if isinstance(value, dict):
        return {key: _blocks(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_blocks(item) for item in value]
    if isinstance(value, str) and "\n" in value:
        return _Literal(value)
    return value


def prometheus_rule(rules_text: str) -> dict[str, Any]:
    """Return the PrometheusRule resource holding the groups of a Prometheus rule file."""
    groups = yaml.safe_load(rules_text)["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "mailflow-probe"},
        "spec": {"groups": groups},
    }


def render(rules_text: str) -> str:
    """Return the committed text of prometheusrule.yaml for a rule file's text."""
    body = yaml.dump(_blocks(prometheus_rule(rules_text)), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     width=120)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    """Write prometheusrule.yaml, or with --check compare it with the committed file."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file is out of date")
    args = parser.parse_args(argv)
    text = render(RULES.read_text(encoding="utf-8"))
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python3 deploy/kubernetes/generate.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
