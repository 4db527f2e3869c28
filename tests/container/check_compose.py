#!/usr/bin/env python3
"""Checks the resolved docker-compose.yml (`docker-compose config` output) for what the
deployment promises and a schema check cannot see (run.sh):
- keygate runs 2 replicas, after the one-shot migrate has completed successfully and
  after PostgreSQL and Redis are healthy; migrate waits for a healthy PostgreSQL;
- PostgreSQL and Redis have health checks and named volumes;
- only nginx publishes a port; its config is config/nginx.conf;
- keygate gets DATABASE_URL, REDIS_URL and the bootstrap key from the environment, and
  the image carries no secret (no build args).
Usage: check_compose.py RESOLVED.yml
"""

import sys

import yaml


def main(path):
    spec = yaml.safe_load(open(path, encoding="utf-8"))
    services = spec["services"]
    problems = []

    def need(cond, message):
        if not cond:
            problems.append(message)

    need(set(services) == {"postgres", "redis", "migrate", "keygate", "nginx"},
         f"services: {sorted(services)}")
    kg, migrate, nginx = services["keygate"], services["migrate"], services["nginx"]
    need(kg.get("deploy", {}).get("replicas") == 2, "keygate: deploy.replicas is not 2")
    deps = kg.get("depends_on", {})
    need(deps.get("migrate", {}).get("condition") == "service_completed_successfully",
         "keygate does not wait for migrate to complete successfully")
    for dep in ("postgres", "redis"):
        need(deps.get(dep, {}).get("condition") == "service_healthy", f"keygate does not wait for a healthy {dep}")
    need(migrate.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy",
         "migrate does not wait for a healthy postgres")
    need(migrate.get("command") == ["migrate"], f"migrate's command: {migrate.get('command')}")
    need(migrate.get("restart") in (None, "no"), "migrate restarts")
    for name in ("postgres", "redis"):
        svc = services[name]
        need("healthcheck" in svc and svc["healthcheck"].get("test"), f"{name} has no health check")
        need(any(str(v).split(":")[0] in spec.get("volumes", {}) if isinstance(v, str) else v.get("source") in spec.get("volumes", {})
                 for v in svc.get("volumes", [])), f"{name} has no named volume")
    published = [name for name, svc in services.items() if svc.get("ports")]
    need(published == ["nginx"], f"services publishing ports: {published}")
    need(len(nginx.get("ports", [])) == 1, "nginx publishes more than one port")
    need(any("nginx.conf" in (v if isinstance(v, str) else v.get("source", "")) for v in nginx.get("volumes", [])),
         "nginx does not mount config/nginx.conf")
    env = kg.get("environment", {})
    for var in ("DATABASE_URL", "REDIS_URL", "KEYGATE_BOOTSTRAP_ADMIN_KEY"):
        need(env.get(var), f"keygate has no {var}")
    need(env.get("DATABASE_URL", "").startswith("postgres://"), "keygate's DATABASE_URL is not PostgreSQL")
    for name in ("keygate", "migrate"):
        build = services[name].get("build", {})
        need(not build.get("args"), f"{name}: build args (secrets must not reach the image)")

    if problems:
        print("docker-compose.yml:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print("docker-compose.yml: ok")


if __name__ == "__main__":
    main(sys.argv[1])
