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
    let (port, mut child) = spawn_run(&pool, &app, "* * * * * *");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut metrics = String::new();
    for _ in 0..400 {
        metrics = wait_for_status(&client, &url, 200).await;
        if metrics.contains("im1_checks_total{supplier=\"emis\",outcome=\"suspect\"}")
            && metrics.contains("im1_supplier_circuit_open{")
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
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;

    let (ok, out) = promtool(&["check", "metrics"], Some(&metrics));
    assert!(ok, "promtool check metrics: {out}\n{metrics}");

    // Every metric an alert queries is one the service exports.
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let text = alerts();
    let queried: BTreeSet<&str> =
        text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| w.starts_with("im1_")).collect();
    assert!(queried.len() >= 6);
    for name in queried {
        assert!(exported.contains(name), "alerts.yml queries {name}, which /metrics does not export");
    }
}
