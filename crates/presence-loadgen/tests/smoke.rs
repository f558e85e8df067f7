//! The load generator against a real broker (in-process server over a
//! real nats-server): both phases deliver every event the fanout implies
//! and the JSON report says so. Speed is not asserted here — it is
//! measured by running the tool (docs/benchmarks.md).

#![allow(clippy::unwrap_used, missing_docs)]

use presence_presenced::config::Config;
use presence_presenced::server::Server;
use presence_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_loadgen_reports_both_phases_against_a_real_broker() {
    let nats = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: tmp.path().join("data"),
        nats_url: nats.url().into(),
        metrics_listen: String::new(),
        max_streams_per_principal: 1000,
        device_rate_per_second: 100_000,
        device_rate_burst: 100_000,
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::build(cfg).await.unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let handle = tokio::spawn(async move { server.run(listener, stop).await });

    let json = tmp.path().join("report.json");
    let grpc = format!("http://{addr}");
    let token = tmp.path().join("data/bootstrap-admin.token");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_presence-loadgen"))
        .args(["--grpc", &grpc, "--nats", nats.url()])
        .arg("--token-file")
        .arg(&token)
        .args(["--users", "30", "--streams", "6", "--targets", "5"])
        .args(["--style", "gateway", "--connections", "2"])
        .args(["--rate", "300", "--duration", "1"])
        .arg("--json")
        .arg(&json)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("broker/baseline"), "{table}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for phase in ["baseline", "broker"] {
        let p = &r[phase];
        let expected = p["expected"].as_u64().unwrap();
        // 300 events over 30 users, each watched by one stream.
        assert!(expected >= 250, "{phase}: {p}");
        // Nothing is slow here: every implied delivery arrives.
        assert_eq!(p["delivered"].as_u64(), Some(expected), "{phase}: {p}");
        assert!(p["latency"]["p99_us"].as_u64().unwrap() > 0, "{phase}: {p}");
    }
    assert!(r["throughput_ratio"].as_f64().unwrap() > 0.0);

    shutdown.cancel();
    handle.await.unwrap().unwrap();
}
