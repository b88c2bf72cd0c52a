// Validate prometheus-operator resources against the operator's CRD schemas, offline, with
// @kubernetes-models/prometheus-operator (run by tests/test_kubernetes.py).
// Reads a JSON array of resources on stdin; writes a JSON array of {kind, name, ok, error} on stdout.
"use strict";

const { ServiceMonitor } = require("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor");
const { PrometheusRule } = require("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule");
const { PodMonitor } = require("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor");

const MODELS = { ServiceMonitor, PrometheusRule, PodMonitor };

function check(resource) {
  const kind = resource && resource.kind;
  const name = resource && resource.metadata && resource.metadata.name;
  const Model = MODELS[kind];
  if (resource.apiVersion !== "monitoring.coreos.com/v1" || Model === undefined) {
    return { kind, name, ok: false, error: `not a monitoring.coreos.com/v1 kind this validator knows: ${kind}` };
  }
  try {
    new Model(resource).validate();
    return { kind, name, ok: true, error: null };
  } catch (error) {
    return { kind, name, ok: false, error: String(error.message || error) };
  }
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  process.stdout.write(JSON.stringify(JSON.parse(input).map(check)));
});
