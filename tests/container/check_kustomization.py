#!/usr/bin/env python3
"""Checks deploy/kubernetes as a whole (run.sh), beyond each manifest's schema:
- kustomization.yaml lists every manifest but the Secret template, and only files that exist;
- the Deployment: 3 replicas, readiness on /readyz and liveness on /healthz, memory
  requests and limits, a non-root read-only container, a grace period at least the
  ConfigMap's proxy.timeout_secs;
- the PodDisruptionBudget and the Service select the Deployment's pods;
- the migration Job runs `migrate` with the same Secret.
Usage: check_kustomization.py DIR
"""

import os
import re
import sys

import yaml


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def main(directory):
    problems = []

    def need(cond, message):
        if not cond:
            problems.append(message)

    kustomization = load(os.path.join(directory, "kustomization.yaml"))
    listed = set(kustomization.get("resources", []))
    present = {f for f in os.listdir(directory) if f.endswith(".yaml")} - {"kustomization.yaml"}
    need(listed <= present, f"listed but missing: {sorted(listed - present)}")
    need(present - listed == {"secret.example.yaml"}, f"not listed: {sorted(present - listed - {'secret.example.yaml'})}")

    docs = {}
    for name in present:
        doc = load(os.path.join(directory, name))
        docs[doc["kind"]] = doc

    deploy = docs["Deployment"]
    spec, pod = deploy["spec"], deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    need(spec.get("replicas") == 3, "Deployment: replicas is not 3")
    need(container.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "readiness is not /readyz")
    need(container.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "liveness is not /healthz")
    resources = container.get("resources", {})
    need(resources.get("requests", {}).get("memory") and resources.get("limits", {}).get("memory"),
         "no memory request and limit")
    need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "pod does not run as non-root")
    need(container.get("securityContext", {}).get("readOnlyRootFilesystem") is True, "root filesystem is writable")
    toml = docs["ConfigMap"]["data"]["keygate.toml"]
    timeout = re.search(r"^timeout_secs\s*=\s*([0-9.]+)", toml, re.M)
    timeout = float(timeout.group(1)) if timeout else 600.0
    need(pod.get("terminationGracePeriodSeconds", 30) >= timeout,
         f"terminationGracePeriodSeconds below proxy.timeout_secs ({timeout})")
    secret = docs["Secret"]["metadata"]["name"]
    need(any(e.get("secretRef", {}).get("name") == secret for e in container.get("envFrom", [])),
         "the Deployment does not read the Secret")

    for kind in ("PodDisruptionBudget", "Service"):
        selector = docs[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        need(all(labels.get(k) == v for k, v in selector.items()), f"{kind} does not select the Deployment's pods")

    job = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    need(job.get("args") == ["migrate"], "the Job does not run migrate")
    need(any(e.get("secretRef", {}).get("name") == secret for e in job.get("envFrom", [])),
         "the Job does not read the Secret")

    if problems:
        print("deploy/kubernetes:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print("deploy/kubernetes: ok")


if __name__ == "__main__":
    main(sys.argv[1])
