//! Operations artefacts checked against the real service: the alert rules load and pass
//! their unit tests in promtool, every alert links a runbook section that exists and
//! queries only metrics the service exports, and the service's real `/metrics` output
//! passes `promtool check metrics`. promtool comes from Debian's `prometheus` package
//! (scripts/test installs it).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use sqlx::PgPool;

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(format!("{ROOT}/deploy/prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed (Debian: apt-get install prometheus); scripts/test installs it");
    let input = stdin.unwrap_or_default().to_owned();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn alert_rules_load_and_pass_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"], None);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"], None);
    assert!(ok, "{out}");
}

fn alerts() -> String {
    std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/alerts.yml")).unwrap()
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .collect::<String>()
        .replace(' ', "-")
}

#[test]
fn every_alert_has_severity_for_summary_and_a_runbook_section_that_exists() {
    let runbook = std::fs::read_to_string(format!("{ROOT}/docs/runbook.md")).unwrap();
    let anchors: BTreeSet<String> = runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(anchor).collect();
    let text = alerts();
    let alerts = text.matches("- alert:").count();
    assert!(alerts >= 7, "{alerts} alerts");
    for field in ["severity:", "for:", "summary:", "runbook_url:"] {
        assert_eq!(text.matches(field).count(), alerts, "every alert has {field}");
    }
    for line in text.lines().filter(|l| l.contains("runbook_url:")) {
        let url = line.split('"').nth(1).expect("quoted runbook_url");
        let (path, fragment) = url.split_once('#').expect("an anchor");
        assert_eq!(path, "docs/runbook.md");
        assert!(anchors.contains(fragment), "{fragment} is not a section of docs/runbook.md: {anchors:?}");
    }
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn real_metrics_pass_promtool_and_cover_every_alert_query(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.emis_user("ok", &["valid"]).await;
    app.emis_user("revoked", &["not_registered"]).await;
    // A stored row that cannot be decrypted, so the skip series exists too.
    app.emis_user("corrupt", &["valid"]).await;
    sqlx::query("UPDATE im1_credentials SET token_ciphertext = '\\x00' WHERE user_id = 'corrupt'")
        .execute(&pool)
        .await
        .unwrap();
    let (port, child) = spawn_run(&pool, &app, "* * * * * *");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut metrics = String::new();
    for _ in 0..400 {
        metrics = wait_for_status(&client, &url, 200).await;
        // Until a whole sweep has finished: every family then has its series.
        if ["im1_rows_skipped_total{", "im1_check_duration_seconds_bucket{", "im1_sweeps_total{"]
            .iter()
            .all(|name| metrics.contains(name))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    // Prometheus asks for OpenMetrics and gets it; everyone else gets the classic format.
    let open = client
        .get(&url)
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(open.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let open = open.text().await.unwrap();
    assert!(open.ends_with("# EOF\n") && open.contains("# TYPE im1_checks counter"), "{open}");
    assert!(!metrics.contains("# EOF") && metrics.contains("# TYPE im1_checks_total counter"));
    stop_run(child).await;

    let (ok, out) = promtool(&["check", "metrics"], Some(&metrics));
    assert!(ok, "promtool check metrics: {out}\n{metrics}");

    // Every metric an alert or a dashboard panel queries is one the service exports.
    let exported = exported_names(&metrics);
    let queried = metric_names(&alerts());
    assert!(queried.len() >= 6);
    for name in queried {
        assert!(exported.contains(&name), "alerts.yml queries {name}, which /metrics does not export");
    }
    for (title, expr) in dashboard_queries() {
        for name in metric_names(&expr) {
            assert!(exported.contains(&name), "panel {title:?} queries {name}, which /metrics does not export");
        }
    }
}

/// Every series name `/metrics` can carry: each family's name, and a histogram's
/// `_bucket`, `_sum` and `_count` (families with no series yet are still declared).
fn exported_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("im1_"))
        .map(str::to_owned)
        .collect()
}

/// (panel title, query) for every panel of the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/grafana/im1-revalidator.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((panel["title"].as_str().unwrap().to_owned(), target["expr"].as_str().unwrap().to_owned()));
        }
    }
    out
}

/// Gauges read from the database: every replica reports the same value.
const DATABASE_GAUGES: &[&str] = &[
    "im1_credentials",
    "im1_refresh_required",
    "im1_credentials_unverified",
    "im1_last_sweep_success_timestamp_seconds",
    "im1_supplier_circuit_open",
    "im1_invalidation_guard_held",
    "im1_held_verdicts",
    "im1_live_processes",
];

#[test]
fn the_dashboard_has_a_fixed_uid_a_datasource_variable_and_aggregates_correctly() {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/grafana/im1-revalidator.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "im1-revalidator");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus")
    );
    for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
    }
    let queries = dashboard_queries();
    for wanted in [
        "im1_checks_total",
        "im1_check_duration_seconds_bucket",
        "im1_credentials",
        "im1_refresh_required",
        "im1_supplier_circuit_open",
        "im1_invalidation_guard_held",
        "im1_sweep_duration_seconds_bucket",
        "im1_last_sweep_success_timestamp_seconds",
    ] {
        assert!(queries.iter().any(|(_, q)| metric_names(q).contains(wanted)), "no panel shows {wanted}");
    }
    for (title, expr) in &queries {
        for name in metric_names(expr) {
            if DATABASE_GAUGES.contains(&name.as_str()) {
                assert!(
                    expr.contains("max") && !expr.contains("sum"),
                    "{title}: {name} is the same in every replica: max, never sum"
                );
            }
            if name.ends_with("_total") || name.ends_with("_bucket") {
                assert!(
                    expr.contains("sum") && (expr.contains("rate(") || expr.contains("increase(")),
                    "{title}: {name} is per process: sum its rate"
                );
            }
        }
    }
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn sweep_draws_a_progress_bar_on_a_terminal_and_plain_lines_otherwise(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    // Slow enough answers that the bar is drawn at least once.
    for i in 0..4 {
        let token = format!("slow-{i}");
        app.sim.script(
            &token,
            vec![im1_revalidator::simulator::Step::new(im1_revalidator::simulator::Behaviour::Valid).delayed(400)],
        );
        app.import(&[emis_line(&format!("u{i}"), &token)]).await;
    }
    let env = [
        ("DATABASE_URL", database_url(&pool)),
        ("IM1_ENCRYPTION_KEYS", KEY_A.to_owned()),
        ("IM1_EMIS_URL", app.running.emis_url()),
        ("IM1_EMIS_APPLICATION_ID", "app".to_owned()),
        ("IM1_CONCURRENCY", "1".to_owned()),
        ("TERM", "xterm".to_owned()),
    ];
    // On a terminal (a pseudo-terminal from `script`): the bar, redrawn in place.
    let bin = BIN.to_owned();
    let tty_env = env.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qec", &format!("{bin} sweep"), "/dev/null"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(tty_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux) runs")
    })
    .await
    .unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{terminal}");
    assert!(terminal.contains("\r\x1b[2Ksweep ["), "no bar on a terminal: {terminal:?}");
    assert!(terminal.contains(" of 4 ("), "{terminal:?}");

    // Piped: no control characters at all.
    im1_revalidator::store::status::recheck(&pool, &Default::default(), chrono::Utc::now()).await.unwrap();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let (code, stdout, stderr) = outcome(&run_binary(&["sweep"], env, String::new()).await);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'), "{stdout}{stderr}");
}
