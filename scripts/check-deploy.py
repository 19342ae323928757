#!/usr/bin/env python3
"""Static checks of the deployment files; run by scripts/check-deploy, which renders the
kustomizations first and passes the rendered files:

    check-deploy.py BASE.yaml OVERLAY.yaml MIGRATE.yaml

Checks what the README and the contract promise operators: the Dockerfile's shape, the
Compose stack, and the rendered Kubernetes objects (replicas, probes on the admin port,
security contexts, grace periods longer than IM1_SHUTDOWN_GRACE, the CronJob overlay, the
NetworkPolicy's ports, and that every IM1_* variable set anywhere is one the program knows:
an unknown one stops it at start).
"""

import base64
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_PORT = 9187
UID = 10001
SECRET_NAME = "im1-revalidator"
SECRET_KEYS = {"DATABASE_URL", "IM1_ENCRYPTION_KEYS", "IM1_API_TOKENS"}

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
    return ok


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def seconds(duration):
    """IM1 durations as the program writes them (0s, 500ms, 90s, 15m, 1h30m, 7d)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def known_variables():
    """KNOWN_VARIABLES from src/config/mod.rs: anything else starting IM1_ is an error."""
    source = read("src/config/mod.rs")
    m = re.search(r"pub const KNOWN_VARIABLES: &\[&str\] = &\[(.*?)\];", source, re.S)
    if not check(m is not None, "src/config/mod.rs: KNOWN_VARIABLES not found"):
        return None
    return set(re.findall(r'"([A-Z0-9_]+)"', m.group(1)))


KNOWN = known_variables()


def check_variables(where, names):
    if KNOWN is None:
        return
    for name in names:
        if name.upper().startswith("IM1_") or name == "DATABASE_URL":
            check(name in KNOWN, f"{where}: {name} is not a variable the program knows (src/config/mod.rs)")


# ---------------------------------------------------------------- Dockerfile


def dockerfile():
    text = read("Dockerfile")
    # Join continuation lines, drop comments.
    logical = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    instructions = [l.strip() for l in logical.splitlines() if l.strip()]
    froms = [i.split()[1] for i in instructions if i.upper().startswith("FROM ")]
    check(len(froms) >= 2, "Dockerfile: multi-stage (a builder and a runtime stage)")
    if froms:
        builder, runtime = froms[0], froms[-1]
        m = re.fullmatch(r"rust:(\d+)(?:\.(\d+))?(?:\.\d+)?-slim-bookworm", builder)
        if check(m is not None, f"Dockerfile: builder image rust:<version>-slim-bookworm, got {builder}"):
            msrv = re.search(r'^rust-version\s*=\s*"(\d+)\.(\d+)', read("Cargo.toml"), re.M)
            if m.group(2) is not None and msrv:
                check(
                    (int(m.group(1)), int(m.group(2))) >= (int(msrv.group(1)), int(msrv.group(2))),
                    f"Dockerfile: builder {builder} older than Cargo.toml's rust-version",
                )
        check(runtime == "debian:bookworm-slim", f"Dockerfile: runtime image debian:bookworm-slim, got {runtime}")
    check(re.search(r"SQLX_OFFLINE=true", logical) is not None, "Dockerfile: SQLX_OFFLINE=true in the builder")
    check(
        re.search(r"cargo build --release --locked", logical) is not None,
        "Dockerfile: cargo build --release --locked",
    )
    runtime_part = logical[logical.rfind("FROM ") :]
    check("USER 10001:10001" in runtime_part, "Dockerfile: runtime USER 10001:10001")
    check(re.search(r"^EXPOSE 9187$", runtime_part, re.M) is not None, "Dockerfile: EXPOSE 9187")
    check('ENTRYPOINT ["im1-revalidator"]' in runtime_part, 'Dockerfile: ENTRYPOINT ["im1-revalidator"]')
    check('CMD ["run"]' in runtime_part, 'Dockerfile: CMD ["run"]')
    check("/usr/local/bin/im1-revalidator" in runtime_part, "Dockerfile: binary at /usr/local/bin/im1-revalidator")
    check(
        re.search(r"apt-get install .*ca-certificates", runtime_part) is not None,
        "Dockerfile: runtime installs ca-certificates",
    )

    # Every COPY source exists and is not excluded by .dockerignore.
    ignored = [
        l.strip().rstrip("/") for l in read(".dockerignore").splitlines() if l.strip() and not l.startswith("#")
    ]
    copied = []
    for i in instructions:
        if i.upper().startswith("COPY ") and "--from=" not in i:
            copied += i.split()[1:-1]
    for src in copied:
        src = src.rstrip("/")
        check(os.path.exists(os.path.join(ROOT, src)), f"Dockerfile: COPY {src}: no such path")
        top = src.split("/")[0]
        check(top not in ignored and src not in ignored, f"Dockerfile: COPY {src} is excluded by .dockerignore")

    # What the crate embeds at compile time must be in the build context copied.
    def is_copied(rel):
        return any(rel == c.rstrip("/") or rel.startswith(c.rstrip("/") + "/") for c in copied)

    for dirpath, _, files in os.walk(os.path.join(ROOT, "src")):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                source = f.read()
            for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', source):
                rel = os.path.relpath(os.path.normpath(os.path.join(dirpath, m.group(1))), ROOT)
                check(is_copied(rel), f"Dockerfile: {os.path.relpath(path, ROOT)} embeds {rel}, which is not copied")
            for m in re.finditer(r'sqlx::migrate!\(\s*"([^"]+)"', source):
                rel = os.path.normpath(m.group(1))
                check(is_copied(rel), f"Dockerfile: migrations directory {rel} is not copied")
    check(is_copied(".sqlx"), "Dockerfile: .sqlx/ (the offline query cache) is not copied")


# ---------------------------------------------------------------- Compose


def simulator_prefixes():
    source = read("src/simulator/mod.rs")
    prefixes = {}
    for supplier in ("emis", "tpp", "vision"):
        m = re.search(r"fn %s_url\(&self\) -> String \{\s*format!\(\"http://\{\}(/[^\"]*)\"" % supplier, source)
        if check(m is not None, f"src/simulator/mod.rs: {supplier}_url not found"):
            prefixes[supplier] = m.group(1)
    return prefixes


# The OTEL_* variables the service reads (README, "Tracing"; src/telemetry/).
OTEL_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
}


def interpolate_default(value):
    """Compose's ${VAR:-default} with VAR unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def compose():
    doc = yaml.safe_load(read("deploy/docker-compose.yml"))
    services = doc.get("services", {})
    missing = [n for n in ("postgres", "migrate", "simulator", "worker") if n not in services]
    if not check(not missing, f"docker-compose.yml: services missing: {missing}"):
        return
    pg, migrate, sim, worker = (services[n] for n in ("postgres", "migrate", "simulator", "worker"))
    check(str(pg.get("image", "")).startswith("postgres:15"), "docker-compose.yml: postgres image postgres:15")
    check("pg_isready" in " ".join(map(str, pg.get("healthcheck", {}).get("test", []))), "compose: pg_isready healthcheck")
    check(migrate.get("command") == ["migrate"], "docker-compose.yml: migrate runs `migrate`")
    check(migrate.get("build", {}).get("context") == "..", "docker-compose.yml: migrate builds the repository root")
    check(
        migrate.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy",
        "docker-compose.yml: migrate waits for a healthy postgres",
    )
    check(
        sim.get("command", [])[:1] == ["simulate"] and "0.0.0.0:8080" in sim.get("command", []),
        "docker-compose.yml: simulator runs `simulate --addr 0.0.0.0:8080`",
    )
    check(worker.get("command") == ["run"], "docker-compose.yml: worker runs `run`")
    deps = worker.get("depends_on", {})
    check(deps.get("postgres", {}).get("condition") == "service_healthy", "compose: worker waits for postgres healthy")
    check(
        deps.get("migrate", {}).get("condition") == "service_completed_successfully",
        "docker-compose.yml: worker waits for migrate to complete",
    )
    check("simulator" in deps, "docker-compose.yml: worker depends on the simulator")
    check(
        any(str(p).split(":")[-2:] == ["9187", "9187"] for p in worker.get("ports", [])),
        "docker-compose.yml: worker publishes 9187",
    )
    env = {k: interpolate_default(v) for k, v in worker.get("environment", {}).items()}
    check_variables("docker-compose.yml worker", env)
    check("DATABASE_URL" in env and "@postgres:5432/" in env["DATABASE_URL"], "compose: worker DATABASE_URL to postgres")
    check("DATABASE_URL" in migrate.get("environment", {}), "docker-compose.yml: migrate has DATABASE_URL")
    for supplier, prefix in simulator_prefixes().items():
        var = f"IM1_{supplier.upper()}_URL"
        check(
            env.get(var) == f"http://simulator:8080{prefix}",
            f"docker-compose.yml: {var} should be http://simulator:8080{prefix}, got {env.get(var)}",
        )
    keys = env.get("IM1_ENCRYPTION_KEYS", "")
    m = re.fullmatch(r"([A-Za-z0-9_-]+):([A-Za-z0-9+/=]+)", keys)
    if check(m is not None, "docker-compose.yml: IM1_ENCRYPTION_KEYS default is id:base64key"):
        check(len(base64.b64decode(m.group(2))) == 32, "docker-compose.yml: development key is 32 bytes")
    # Traces: a Jaeger (or OpenTelemetry Collector) service receiving OTLP/HTTP, the worker
    # exporting to it, and nothing but the standard OTEL_* variables configuring it.
    collectors = [n for n, svc in services.items() if re.match(r"(jaegertracing/(jaeger|all-in-one)|otel/opentelemetry-collector)", str(svc.get("image", "")))]
    if check(len(collectors) == 1, f"docker-compose.yml: one Jaeger or OpenTelemetry Collector service, got {collectors}"):
        name = collectors[0]
        check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == f"http://{name}:4318", f"compose: worker OTEL_EXPORTER_OTLP_ENDPOINT should be http://{name}:4318 (OTLP/HTTP)")
        check(name in deps, f"docker-compose.yml: worker depends on {name}")
        check(any(str(p).endswith(":16686") for p in services[name].get("ports", [])) or "collector" in name, f"docker-compose.yml: {name} publishes its UI (16686)")
    unknown_otel = [k for k in env if k.startswith("OTEL_") and k not in OTEL_VARIABLES]
    check(not unknown_otel, f"docker-compose.yml: worker has OTEL_* variables the service does not read: {unknown_otel}")
    grace = seconds(env.get("IM1_SHUTDOWN_GRACE", "25s"))
    stop = worker.get("stop_grace_period")
    check(stop is not None and seconds(stop) > grace, "docker-compose.yml: worker stop_grace_period > IM1_SHUTDOWN_GRACE")


# ---------------------------------------------------------------- Kubernetes


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind, where):
    found = by_kind(docs, kind)
    check(len(found) == 1, f"{where}: exactly one {kind}, found {len(found)}")
    return found[0] if found else None


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def pod_checks(where, pod, containers, config_maps, grace, probes):
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccompProfile RuntimeDefault")
    check(spec.get("automountServiceAccountToken") is False, f"{where}: no service account token mounted")
    tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    if grace is not None:
        tgps = spec.get("terminationGracePeriodSeconds")
        pre_stop = 0
        for c in containers:
            cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            if len(cmd) == 2 and cmd[0] == "sleep":
                pre_stop = max(pre_stop, int(cmd[1]))
        check(
            tgps is not None and tgps > max(grace, 25) + pre_stop,
            f"{where}: terminationGracePeriodSeconds ({tgps}) > preStop ({pre_stop}s) + IM1_SHUTDOWN_GRACE ({grace}s)",
        )
    for c in containers:
        cwhere = f"{where} container {c.get('name')}"
        sc = c.get("securityContext", {})
        check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cwhere}: runAsNonRoot")
        check(sc.get("runAsUser", psc.get("runAsUser")) == UID, f"{cwhere}: runAsUser {UID}")
        check(sc.get("readOnlyRootFilesystem") is True, f"{cwhere}: readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{cwhere}: allowPrivilegeEscalation false")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cwhere}: capabilities drop ALL")
        check(
            sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "RuntimeDefault",
            f"{cwhere}: seccompProfile RuntimeDefault",
        )
        check(str(c.get("image", "")).startswith("im1-revalidator:"), f"{cwhere}: image im1-revalidator:<tag>")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                check(r in res.get(part, {}), f"{cwhere}: resources.{part}.{r}")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        check(mounts.get("/tmp") in tmp_volumes, f"{cwhere}: /tmp is an emptyDir (read-only root filesystem)")
        for ref in c.get("envFrom", []):
            if "configMapRef" in ref:
                name = ref["configMapRef"]["name"]
                check(name in config_maps, f"{cwhere}: ConfigMap {name} is not rendered")
            if "secretRef" in ref:
                check(ref["secretRef"]["name"] == SECRET_NAME, f"{cwhere}: Secret {SECRET_NAME}")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                check(ref["name"] == SECRET_NAME and ref["key"] in SECRET_KEYS, f"{cwhere}: secretKeyRef {ref}")
        check_variables(cwhere, [e["name"] for e in c.get("env", [])])
        if probes:
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            check(ADMIN_PORT in ports.values(), f"{cwhere}: containerPort {ADMIN_PORT}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                port = get.get("port")
                port = ports.get(port, port)
                check(
                    get.get("path") == path and port == ADMIN_PORT,
                    f"{cwhere}: {probe} GET {path} on {ADMIN_PORT}, got {get.get('path')} on {port}",
                )
            ready_timeout = c.get("readinessProbe", {}).get("timeoutSeconds", 1)
            check(ready_timeout > 5, f"{cwhere}: readinessProbe timeout > 5s (/readyz waits up to 5s for the database)")


def kubernetes(base_path, overlay_path, migrate_path):
    base = load_all(base_path)
    overlay = load_all(overlay_path)
    migrate = load_all(migrate_path)
    version = re.search(r'^version\s*=\s*"([^"]+)"', read("Cargo.toml"), re.M).group(1)

    for where, docs, with_cronjob in (("base", base, False), ("overlay cronjob", overlay, True)):
        kinds = sorted(d["kind"] for d in docs)
        expected = sorted(
            ["ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
             "ServiceMonitor"] + (["CronJob"] if with_cronjob else [])
        )
        check(kinds == expected, f"{where}: objects {kinds}, expected {expected}")
        check(not by_kind(docs, "Secret"), f"{where}: no Secret in the rendered manifests")
        cms = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}
        config = next(iter(cms.values()), {})
        check_variables(f"{where} ConfigMap", config)
        grace = seconds(config.get("IM1_SHUTDOWN_GRACE", "25s"))
        check(
            config.get("IM1_ADMIN_ADDR", "0.0.0.0:9187").endswith(f":{ADMIN_PORT}"),
            f"{where}: IM1_ADMIN_ADDR on port {ADMIN_PORT}",
        )

        dep = one(docs, "Deployment", where)
        if dep is None:
            continue
        spec = dep["spec"]
        pod_labels = spec["template"]["metadata"]["labels"]
        check(spec.get("replicas") == 2, f"{where}: Deployment replicas 2, got {spec.get('replicas')}")
        check(selects(spec["selector"]["matchLabels"], pod_labels), f"{where}: Deployment selector matches its pods")
        containers = spec["template"]["spec"]["containers"]
        check([c.get("args") for c in containers] == [["run"]], f"{where}: Deployment runs `run`")
        check(containers[0]["image"] == f"im1-revalidator:{version}", f"{where}: image tag is Cargo.toml's {version}")
        pod_checks(f"{where} Deployment", spec["template"], containers, cms, grace, probes=True)
        schedule = {e["name"]: e.get("value") for e in containers[0].get("env", [])}.get(
            "IM1_SCHEDULE", config.get("IM1_SCHEDULE")
        )
        if with_cronjob:
            check(schedule == "off", f"{where}: Deployment has IM1_SCHEDULE=off, got {schedule!r}")
        else:
            check(schedule not in (None, "off"), f"{where}: base Deployment sweeps on a schedule, got {schedule!r}")

        svc = one(docs, "Service", where)
        if svc:
            ports = svc["spec"]["ports"]
            check(
                any(p["port"] == ADMIN_PORT and p.get("name") == "admin" for p in ports),
                f"{where}: Service port admin {ADMIN_PORT}",
            )
            check(selects(svc["spec"]["selector"], pod_labels), f"{where}: Service selects the Deployment's pods")
        pdb = one(docs, "PodDisruptionBudget", where)
        if pdb:
            check(pdb["spec"].get("minAvailable") == 1, f"{where}: PodDisruptionBudget minAvailable 1")
            check(selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), f"{where}: PDB selects the Deployment")
        sm = one(docs, "ServiceMonitor", where)
        if sm and svc:
            check(sm["apiVersion"] == "monitoring.coreos.com/v1", f"{where}: ServiceMonitor monitoring.coreos.com/v1")
            check(selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]), f"{where}: SM selects Service")
            eps = sm["spec"]["endpoints"]
            check(
                any(e.get("port") == "admin" and e.get("path") == "/metrics" for e in eps),
                f"{where}: ServiceMonitor scrapes port admin, path /metrics",
            )
        np = one(docs, "NetworkPolicy", where)
        if np:
            nps = np["spec"]
            check(sorted(nps.get("policyTypes", [])) == ["Egress", "Ingress"], f"{where}: NetworkPolicy both directions")
            check(selects(nps["podSelector"]["matchLabels"], pod_labels), f"{where}: NetworkPolicy covers the pods")
            ingress = {(p.get("protocol", "TCP"), p["port"]) for r in nps.get("ingress", []) for p in r.get("ports", [])}
            check(ingress == {("TCP", ADMIN_PORT)}, f"{where}: ingress only to TCP {ADMIN_PORT}, got {ingress}")
            check(
                all(r.get("from") and r.get("ports") for r in nps.get("ingress", [])),
                f"{where}: every ingress rule names its peers and ports",
            )
            egress = {(p.get("protocol", "TCP"), p["port"]) for r in nps.get("egress", []) for p in r.get("ports", [])}
            expected_egress = {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 443)}
            check(egress == expected_egress, f"{where}: egress ports {sorted(egress)}, expected {sorted(expected_egress)}")
            check(
                all(r.get("to") and r.get("ports") for r in nps.get("egress", [])),
                f"{where}: every egress rule names its peers and ports",
            )

        if with_cronjob:
            cj = one(docs, "CronJob", where)
            if cj:
                cspec = cj["spec"]
                check(cspec.get("concurrencyPolicy") == "Forbid", f"{where}: CronJob concurrencyPolicy Forbid")
                check(cspec.get("schedule") == "*/5 * * * *", f"{where}: CronJob every 5 minutes")
                check(isinstance(cspec.get("startingDeadlineSeconds"), int), f"{where}: CronJob startingDeadlineSeconds")
                job = cspec["jobTemplate"]["spec"]
                check(isinstance(job.get("backoffLimit"), int), f"{where}: CronJob backoffLimit")
                pod = job["template"]
                check(pod["spec"].get("restartPolicy") in ("Never", "OnFailure"), f"{where}: CronJob restartPolicy")
                cc = pod["spec"]["containers"]
                check([c.get("args") for c in cc] == [["sweep"]], f"{where}: CronJob runs `sweep`")
                check(cc[0]["image"] == containers[0]["image"], f"{where}: CronJob uses the Deployment's image")
                pod_checks(f"{where} CronJob", pod, cc, cms, grace, probes=False)
                labels = pod["metadata"]["labels"]
                if np:
                    check(selects(np["spec"]["podSelector"]["matchLabels"], labels), f"{where}: NetworkPolicy covers sweeps")
                if svc:
                    check(not selects(svc["spec"]["selector"], labels), f"{where}: the Service does not select sweeps")

    check(sorted(d["kind"] for d in migrate) == ["Job"], "migrate: exactly one Job")
    job = one(migrate, "Job", "migrate")
    if job:
        pod = job["spec"]["template"]
        cc = pod["spec"]["containers"]
        check([c.get("args") for c in cc] == [["migrate"]], "migrate: the Job runs `migrate`")
        check(pod["spec"].get("restartPolicy") in ("Never", "OnFailure"), "migrate: restartPolicy")
        check(cc[0]["image"] == f"im1-revalidator:{version}", f"migrate: image tag is Cargo.toml's {version}")
        check("DATABASE_URL" in {e["name"] for e in cc[0].get("env", [])}, "migrate: DATABASE_URL from the Secret")
        pod_checks("migrate Job", pod, cc, {}, None, probes=False)
        if np_docs := by_kind(base, "NetworkPolicy"):
            check(
                selects(np_docs[0]["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"]),
                "migrate: the NetworkPolicy covers the Job's pods (egress to PostgreSQL)",
            )

    secret = yaml.safe_load(read("deploy/kubernetes/secret.example.yaml"))
    check(secret.get("kind") == "Secret" and secret["metadata"]["name"] == SECRET_NAME, "secret.example.yaml: Secret")
    data = secret.get("stringData", {})
    check(set(data) == SECRET_KEYS, f"secret.example.yaml: keys {sorted(SECRET_KEYS)}")
    check(all("REPLACE" in str(v) for v in data.values()), "secret.example.yaml: every value is a REPLACE placeholder")
    check_variables("secret.example.yaml", data)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    dockerfile()
    compose()
    kubernetes(*sys.argv[1:])
    if failures:
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        sys.exit(1)
    print("deployment files: all checks passed")


if __name__ == "__main__":
    main()
