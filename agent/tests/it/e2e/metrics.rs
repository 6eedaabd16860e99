//! Every metric name the alert rules and the dashboard use
//! (`deploy/observability/alerts.yaml`, `dashboard.json`) exists on a real scrape of the
//! service or of the agent: nothing may refer to a metric that does not exist.
use std::{collections::BTreeSet, sync::Arc, time::SystemTime};

use auth_agent::{AgentState, SystemClock, health::render_metrics};
use auth_service::renewal::RenewalPolicy;

use crate::{
    e2e::harness::{Service, login, options, spawn_agent},
    support::TempDir,
};

/// The prefixes of the metric names the deploy files use.
const PREFIXES: [&str; 4] = ["auth_", "grpc_", "http_", "process_"];

/// The metric names in a PromQL expression (or any text): identifiers with one of the
/// prefixes.
fn names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| PREFIXES.iter().any(|p| word.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// The series names a scrape can show, from its `# TYPE` lines: a counter's with
/// `_total`, a histogram's `_bucket`, `_sum` and `_count`, an info's `_info`; and the
/// label names its samples carry (an expression names those too).
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for labels in scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('{').and_then(|(_, rest)| rest.split_once('}')))
    {
        for pair in labels.0.split(',') {
            if let Some((key, _)) = pair.split_once('=') {
                out.insert(key.trim().to_owned());
            }
        }
    }
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            "info" => {
                out.insert(format!("{name}_info"));
            }
            _ => {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/observability");
    let rules = std::fs::read_to_string(format!("{root}/alerts.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(format!("{root}/dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut used = BTreeSet::new();
    for line in rules.lines() {
        if let Some(expr) = line.trim_start().strip_prefix("expr:") {
            used.extend(names_in(expr));
        }
    }
    // Multi-line expressions: every line of the rule file that is not an annotation.
    let mut in_expr = false;
    for line in rules.lines() {
        let t = line.trim_start();
        if t.starts_with("expr:") {
            in_expr = true;
        } else if t.starts_with("for:") || t.starts_with("labels:") || t.starts_with("- alert:") {
            in_expr = false;
        } else if in_expr {
            used.extend(names_in(t));
        }
    }
    fn exprs(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if (k == "expr" || k == "query" || k == "definition")
                        && let Some(text) = v.as_str()
                    {
                        out.extend(names_in(text));
                    }
                    exprs(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| exprs(i, out)),
            _ => {}
        }
    }
    exprs(&dashboard, &mut used);
    assert!(used.len() > 20, "the deploy files use metrics: {used:?}");

    // A real service, and a real agent renewing through it.
    let service = Service::start(RenewalPolicy::default()).await;
    let (_, raw) = service.token_expiring_in(3.0 * 86_400.0).await;
    let dir = TempDir::new();
    let config = dir.join("config");
    login(&service, &config, &raw).await;
    let agent = spawn_agent(options(&service, &config), Arc::new(SystemClock));
    let ready = agent
        .wait_for("ready", |s| {
            s.state == AgentState::Ready && s.expires_at.is_some() && s.next_attempt_at.is_some()
        })
        .await;
    // The second scrape shows the first one's request on the HTTP port.
    let _ = service.metrics().await;
    let mut available = exported(&service.metrics().await);
    available.extend(exported(&render_metrics(&ready, SystemTime::now())));
    let missing: Vec<&String> = used.difference(&available).collect();
    assert!(
        missing.is_empty(),
        "used by the rules or the dashboard but exported by neither: {missing:?}"
    );
    agent.stop().await;
    service.shutdown().await;
}
