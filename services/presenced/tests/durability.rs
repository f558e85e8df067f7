//! Durability of the real binary: kill -9 during a stream of writes, and
//! every acknowledged write is there after a restart on the same data
//! directory.

#![allow(clippy::unwrap_used, missing_docs)]

use presence_client::connect;
use presence_proto::v1;
use presence_testkit::ChildGuard as Proc;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Starts presenced on a random port and waits for its ready file.
fn start(dir: &Path) -> (Proc, String) {
    start_with(dir, &["--metrics-listen", ""])
}

/// Like [`start`], with extra flags.
fn start_with(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra);
    spawn_ready(cmd, &dir.join("ready"))
}

fn spawn_ready(cmd: Command, ready: &Path) -> (Proc, String) {
    presence_testkit::spawn_ready(cmd, ready, "presenced")
}

fn token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/bootstrap-admin.token"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_kill_9_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut proc, url) = start(tmp.path());
    let tok = token(tmp.path());
    let mut c = connect(&url, Some(&tok)).await.unwrap();
    c.directory
        .create_domain(v1::CreateDomainRequest {
            id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(Vec::<String>::new());
    let writer = {
        let mut c = c.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10_000 {
                let id = format!("u{i:05}");
                let r = c
                    .directory
                    .create_user(v1::CreateUserRequest {
                        domain: "acme".into(),
                        id: id.clone(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => {
                        acked.push(id);
                        let _ = acked_tx.send(acked.clone());
                    }
                    Err(_) => break, // the server died under us
                }
            }
            acked
        })
    };
    // Kill -9 once a good number of writes were acknowledged.
    acked_rx.wait_for(|a| a.len() >= 60).await.unwrap();
    proc.0.kill().unwrap(); // SIGKILL
    proc.0.wait().unwrap();
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 60);

    let (_proc2, url2) = start(tmp.path());
    let mut c = connect(&url2, Some(&tok)).await.unwrap();
    let mut present = std::collections::BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .directory
            .list_users(v1::ListUsersRequest {
                domain: "acme".into(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        present.extend(r.users.into_iter().map(|u| u.id));
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !present.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes lost after kill -9: {missing:?}"
    );
    // At most the one in-flight write may be there beyond the acked ones.
    assert!(
        present.len() <= acked.len() + 1,
        "{} present, {} acked",
        present.len(),
        acked.len()
    );
    // Search index is consistent with the records after the crash.
    let found = c
        .directory
        .list_users(v1::ListUsersRequest {
            domain: "acme".into(),
            search: acked[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.users.len(), 1);
}

#[tokio::test]
async fn test_bad_config_exits_64_before_binding() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        vec!["--listen", "not-an-address"],
        vec!["--roles", "directory,router"],
        vec!["--log-format", "xml"],
        vec!["--config", "/nonexistent/presence.toml"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(&args)
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid configuration"), "{args:?}: {err}");
    }
    // The environment layer is validated too.
    let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .env("PRESENCE_BUS_CAPACITY", "0")
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bus_capacity"));
    // A bad TOML file is refused as a whole.
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nsurprise = true\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(!tmp.path().join("data").exists(), "nothing was created");
}

#[tokio::test]
async fn test_token_issue_command_signs_with_the_data_dir_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (proc, url) = start(tmp.path());
    let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args([
            "token",
            "issue",
            "--service",
            "pbx",
            "--domain",
            "*",
            "--right",
            "directory.read",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut c = connect(&url, Some(&t)).await.unwrap();
    let who = c
        .auth
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    match who.principal.and_then(|p| p.kind) {
        Some(v1::principal::Kind::Service(s)) => assert_eq!(
            (s.name.as_str(), s.rights),
            ("pbx", vec!["directory.read".to_string()])
        ),
        other => panic!("{other:?}"),
    }
    // A token for a named domain must be bound to the domain's current
    // incarnation, which only the running directory knows.
    let named = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args([
            "token",
            "issue",
            "--domain",
            "acme",
            "--right",
            "directory.read",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(named.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&named.stderr).contains("incarnation"),
        "{}",
        String::from_utf8_lossy(&named.stderr)
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["token", "issue", "--domain", "acme", "--right", "root"])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    drop(proc);
}

#[tokio::test]
async fn test_sigterm_shuts_down_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (proc, url) = start(tmp.path());
    let mut c = connect(&url, Some(&token(tmp.path()))).await.unwrap();
    c.directory
        .create_domain(v1::CreateDomainRequest {
            id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut proc = proc;
        proc.terminate(Duration::from_secs(20))
    })
    .await
    .unwrap()
    .expect("presenced did not exit within 20s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    let (_p, url) = start(tmp.path());
    let mut c = connect(&url, Some(&token(tmp.path()))).await.unwrap();
    c.directory
        .get_domain(v1::GetDomainRequest { id: "acme".into() })
        .await
        .unwrap();
}

#[tokio::test]
async fn test_environment_overrides_file_and_flags_override_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("p.toml");
    std::fs::write(&cfg, "listen = \"not-an-address\"\nmetrics_listen = \"\"\n").unwrap();
    // The file's bad listen is overridden by the environment, whose data
    // dir is overridden by the flag.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
    cmd.env("PRESENCE_LISTEN", "127.0.0.1:0")
        .env("PRESENCE_DATA_DIR", tmp.path().join("env-data"))
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(tmp.path().join("flag-data"));
    let (_child, _url) = spawn_ready(cmd, &tmp.path().join("ready"));
    assert!(tmp.path().join("flag-data/bootstrap-admin.token").exists());
    assert!(!tmp.path().join("env-data").exists());
}

/// A second server on a taken address names the setting and the
/// address; its log, written to a pipe, has no colour codes.
#[test]
fn test_taken_addresses_are_named_and_piped_logs_have_no_colour() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = |listen: &str, metrics: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .args(["--listen", listen, "--metrics-listen", metrics])
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("127.0.0.1:0", &addr);
    assert!(err.contains(&format!("metrics_listen {addr}")), "{err}");
    let err = run(&addr, "");
    assert!(err.contains(&format!("listen {addr}")), "{err}");
    assert!(
        err.contains("open files limit"),
        "a log line came first: {err}"
    );
    assert!(
        !err.contains('\x1b'),
        "colour codes in a piped log: {err:?}"
    );
}

#[tokio::test]
async fn test_prometheus_metrics_endpoint() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    // A free port for the exporter (it binds by itself).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let (_proc, url) = start_with(tmp.path(), &["--metrics-listen", &metrics]);
    let mut anon = connect(&url, None).await.unwrap();
    let r = anon
        .auth
        .login(v1::LoginRequest {
            domain: "acme".into(),
            user: "1".into(),
            password: "wrong password".into(),
            new_password: None,
        })
        .await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::Unauthenticated);
    // Fanout counters: one applied event, one for an unknown user.
    let mut admin = connect(&url, Some(&token(tmp.path()))).await.unwrap();
    admin
        .directory
        .create_domain(v1::CreateDomainRequest {
            id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .directory
        .create_user(v1::CreateUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let reg = |user: &str| v1::DeviceEvent {
        domain: "acme".into(),
        user: user.into(),
        device: "d1".into(),
        sequence: 1,
        at_ms: 0,
        kind: Some(v1::device_event::Kind::Registration(v1::Registration {
            expires_seconds: 60,
        })),
    };
    let r = admin
        .presence
        .publish(v1::PublishRequest {
            events: vec![reg("1001"), reg("ghost"), reg("not an id")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.results.iter().map(|x| x.accepted).collect::<Vec<_>>(),
        vec![true, false, false]
    );
    let mut s = std::net::TcpStream::connect(&metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.") && body.contains(" 200 "),
        "{body}"
    );
    assert!(
        body.contains("presence_logins_total{result=\"failed\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("presence_rpc_errors_total{rpc=\"login\"} 1"),
        "{body}"
    );
    // The fanout counters add up: three events in, one applied, one
    // unknown user, one malformed.
    for line in [
        "presence_fanout_events_in_total 3",
        "presence_fanout_events_applied_total 1",
        "presence_fanout_events_rejected_total{reason=\"unknown_user\"} 1",
        "presence_fanout_events_rejected_total{reason=\"malformed\"} 1",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing in {body}");
    }
}
