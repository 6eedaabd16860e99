//! `auth-agent run --otlp-endpoint`: each renewal attempt is the root of a trace of its
//! own, its context goes with the call, and the service's span is its child. The agent
//! is the real binary, exporting to a real OTLP receiver; the service runs in-process,
//! its spans exported to the same receiver by a subscriber scoped to this test.
use std::time::Duration;

use auth_service::renewal::RenewalPolicy;
use auth_telemetry::{
    LogFormat,
    otel::{OtelSettings, Traces},
};
use auth_test_support::otlp::Collector;
use tracing_subscriber::EnvFilter;

use crate::{
    e2e::harness::{PROMPTLY, Process, Service, assert_no_token, command, text},
    support::TempDir,
};

const LONG: Duration = Duration::from_secs(20);
const METHOD: &str = "auth.v1.AuthService/RenewCurrentToken";

#[tokio::test]
async fn a_renewal_from_the_agent_and_the_services_span_share_one_trace() {
    let collector = Collector::start().await.unwrap();
    let endpoint = collector.endpoint();
    // The service's spans, to the same receiver. The test runs on one thread, and so
    // does the in-process service: the scoped subscriber sees all of its spans.
    let traces = Traces::new(&OtelSettings {
        endpoint: endpoint.clone(),
        service_name: "auth-service".into(),
        sampler: None,
        sampler_arg: None,
        batch_delay: Duration::from_millis(100),
    })
    .unwrap();
    let _guard = tracing::subscriber::set_default(auth_telemetry::subscriber(
        LogFormat::Text,
        EnvFilter::new("off"),
        Some((&traces, &["auth_service"][..])),
    ));
    let service = Service::start(RenewalPolicy::default()).await;
    let (_, raw) = service.token_expiring_in(3.0 * 86_400.0).await;
    let dir = TempDir::new();
    let config = dir.join("config");
    let cfg = config.to_str().unwrap();
    let login = command(
        &["login", "--server", &service.url(), "--config", cfg],
        &raw,
        dir.path(),
    )
    .await;
    assert_eq!(login.status.code(), Some(0), "{}", text(&login.stderr));

    let mut agent = Process::spawn(
        &["run", "--config", cfg, "--otlp-endpoint", &endpoint],
        &[("OTEL_SERVICE_NAME", "")],
        dir.path(),
    );
    agent.wait_for_line("authenticated as", PROMPTLY).await;
    // Its spans leave in a batch: at the latest when it stops.
    let status = agent.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", agent.stderr.text());

    let attempt = collector
        .wait_for(LONG, |s| s.service == "auth-agent" && s.name == METHOD)
        .await
        .unwrap_or_else(|| panic!("no renewal span from the agent: {:?}", collector.spans()));
    assert!(
        attempt.parent_span_id.is_empty(),
        "each attempt starts a trace: {attempt:?}"
    );
    assert_eq!(attempt.attribute("rpc.system"), Some("grpc"));
    assert_eq!(attempt.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(attempt.attribute("auth.token.renewed"), Some("true"));
    let server = collector
        .wait_for(LONG, |s| {
            s.service == "auth-service" && s.name == METHOD && s.trace_id == attempt.trace_id
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no service span in the agent's trace {}: {:?}",
                attempt.trace_id,
                collector.spans()
            )
        });
    assert_eq!(
        server.parent_span_id, attempt.span_id,
        "the service's span is the attempt's child"
    );
    service.shutdown().await;

    let spans = format!("{:?}", collector.spans());
    assert_no_token("the exported spans", &spans, &[&raw]);
    assert_no_token("the agent's log", &agent.stderr.text(), &[&raw]);
}
