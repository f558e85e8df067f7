//! presencectl against a real server on loopback: tables, --json,
//! one-line errors with a non-zero exit, login and the policy commands,
//! and live presence (get, watch, publish).

#![allow(clippy::unwrap_used, missing_docs)]

use presence_presenced::{Config, Server};
use std::process::Command;
use tokio_util::sync::CancellationToken;

struct Ctl {
    url: String,
    token: String,
    home: tempfile::TempDir,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_presencectl"))
            .env("PRESENCE_URL", &self.url)
            .env("PRESENCE_TOKEN", &self.token)
            .env("HOME", self.home.path())
            .env_remove("PRESENCE_TOKEN_FILE")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "{args:?} failed: {err}");
        out
    }
}

/// A running embedded server (stopped by [`Running::stop`]).
struct Running {
    _data: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), String>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// Starts an embedded server on loopback and a presencectl for it with
/// the bootstrap administrator's token.
async fn start() -> (Ctl, Running) {
    start_tuned(|_| {}).await
}

/// [`start`] with the configuration adjusted by `tune` (with TLS files
/// set, the URL is `https://`).
async fn start_tuned(tune: impl FnOnce(&mut Config)) -> (Ctl, Running) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: tmp.path().to_path_buf(),
        metrics_listen: String::new(),
        ..Config::default()
    };
    tune(&mut cfg);
    let scheme = if cfg.tls_cert_file.is_empty() {
        "http"
    } else {
        "https"
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let server = Server::build(cfg).await.unwrap();
    let token = std::fs::read_to_string(tmp.path().join("bootstrap-admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let handle =
        tokio::spawn(async move { server.run(listener, stop).await.map_err(|e| e.to_string()) });
    let ctl = Ctl {
        url,
        token,
        home: tempfile::tempdir().unwrap(),
    };
    (
        ctl,
        Running {
            _data: tmp,
            shutdown,
            handle,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_presencectl_over_tls_with_a_ca_file_and_a_client_certificate() {
    let pki = presence_testkit::pki::Pki::new();
    let path = |p: &std::path::Path| p.display().to_string();
    let (ctl, server) = start_tuned(|c| {
        c.tls_cert_file = path(&pki.server_cert);
        c.tls_key_file = path(&pki.server_key);
        c.tls_client_ca_file = path(&pki.ca);
    })
    .await;
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    tokio::task::spawn_blocking(move || {
        assert!(ctl.url.starts_with("https://"), "{}", ctl.url);
        let tls = ["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key];
        let who = ctl.ok(&[&tls[..], &["whoami"]].concat());
        assert!(who.contains("bootstrap-admin"), "{who}");
        // Without the client certificate the server refuses the handshake
        // (with TLS 1.3 the client learns it at its first request).
        let (ok, _, err) = ctl.run(&["--ca-file", &ca, "whoami"]);
        // (the alert, or the connection closed or broken before it was read).
        assert!(
            !ok && (err.contains("transport error") || err.contains("cannot connect")),
            "{err}"
        );
        // Without the CA the server's certificate is not trusted.
        let (ok, _, err) = ctl.run(&["--cert-file", &cert, "--key-file", &key, "whoami"]);
        assert!(!ok && err.contains("cannot connect"), "{err}");
        // A certificate without its key is refused before connecting.
        let (ok, _, err) = ctl.run(&["--ca-file", &ca, "--cert-file", &cert, "whoami"]);
        assert!(!ok && err.contains("--key-file"), "{err}");
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_presencectl_rotates_signing_keys() {
    let (ctl, server) = start().await;
    tokio::task::spawn_blocking(move || {
        let list = ctl.ok(&["keys", "list"]);
        assert!(
            list.contains("deployment") && list.contains("signing"),
            "{list}"
        );
        let added: serde_json::Value =
            serde_json::from_str(&ctl.ok(&["--json", "keys", "add"])).unwrap();
        let id = added["id"].as_str().unwrap().to_owned();
        assert_eq!(added["signing"], true, "{added}");
        // A new admin token under the new key, before the old one goes.
        let issued: serde_json::Value = serde_json::from_str(&ctl.ok(&[
            "--json",
            "token",
            "issue",
            "--service",
            "ops",
            "--domain",
            "*",
            "--right",
            "*",
        ]))
        .unwrap();
        let ops = Ctl {
            token: issued["token"].as_str().unwrap().to_owned(),
            url: ctl.url.clone(),
            home: tempfile::tempdir().unwrap(),
        };
        let out = ops.ok(&["keys", "retire", "deployment"]);
        assert!(
            out.contains("retired") && out.contains("service ops"),
            "{out}"
        );
        let (ok, _, err) = ctl.run(&["whoami"]);
        assert!(!ok && err.contains("retired"), "{err}");
        let list = ops.ok(&["keys", "list"]);
        let first = list.lines().nth(1).unwrap_or_default();
        assert!(
            first.starts_with(&id) && first.contains("signing"),
            "{list}"
        );
        let (ok, _, err) = ops.run(&["keys", "retire", &id]);
        assert!(
            !ok && err.starts_with("error: failed_precondition"),
            "{err}"
        );
        let (ok, _, err) = ops.run(&["keys", "retire", "nonsense"]);
        assert!(!ok && err.starts_with("error: invalid_argument"), "{err}");

        // The deployment-wide trail shows both, newest first.
        let wide = ops.ok(&["audit"]);
        let lines: Vec<&str> = wide.lines().collect();
        assert!(
            lines[0].starts_with("TIME") && lines[0].contains("ACTION"),
            "{wide}"
        );
        assert!(
            lines[1].contains("key.retire") && lines[1].contains("service ops"),
            "{wide}"
        );
        assert!(
            lines[2].contains("token.issue") && lines[3].contains("key.add"),
            "{wide}"
        );
        // A user's trail, paged through with --all.
        ops.ok(&["domains", "create", "acme"]);
        ops.ok(&["sites", "create", "-d", "acme", "hq"]);
        ops.ok(&["users", "create", "-d", "acme", "1001", "--site", "hq"]);
        ops.ok(&[
            "users",
            "update",
            "-d",
            "acme",
            "1001",
            "--scope",
            "office-manager",
        ]);
        let page = ops.ok(&["audit", "-d", "acme", "-u", "1001", "--limit", "1"]);
        assert!(
            page.contains("user.scope") && page.contains("next page: --page-token"),
            "{page}"
        );
        let all: serde_json::Value = serde_json::from_str(&ops.ok(&[
            "--json", "audit", "-d", "acme", "-u", "1001", "--limit", "1", "--all",
        ]))
        .unwrap();
        let actions: Vec<&str> = all["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["user.scope", "user.create"]);
        let (ok, _, err) = ops.run(&["audit", "-u", "1001"]);
        assert!(!ok && err.starts_with("error: invalid_argument"), "{err}");
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_presencectl_end_to_end() {
    let (ctl, server) = start().await;

    tokio::task::spawn_blocking(move || {
        let who = ctl.ok(&["whoami"]);
        assert!(who.contains("bootstrap-admin"), "{who}");
        ctl.ok(&["domains", "create", "acme", "--name", "Acme Corp"]);
        ctl.ok(&["sites", "create", "-d", "acme", "hq"]);
        ctl.ok(&[
            "users",
            "create",
            "-d",
            "acme",
            "1001",
            "--first-name",
            "Jack",
            "--last-name",
            "Manning",
            "--scope",
            "office-manager",
            "--site",
            "hq",
            "--password",
            "a long passphrase",
        ]);
        ctl.ok(&[
            "users",
            "create",
            "-d",
            "acme",
            "1002",
            "--first-name",
            "Rita",
            "--scope",
            "basic-user",
            "--site",
            "hq",
        ]);
        ctl.ok(&[
            "users",
            "create",
            "-d",
            "acme",
            "8000",
            "--kind",
            "call-queue",
            "--first-name",
            "Sales",
        ]);
        let list = ctl.ok(&["users", "list", "-d", "acme"]);
        assert!(list.starts_with("ID"), "table header: {list}");
        assert!(
            list.contains("Jack Manning") && !list.contains("8000"),
            "{list}"
        );
        let all = ctl.ok(&[
            "users",
            "list",
            "-d",
            "acme",
            "--show-system",
            "--search",
            "sal",
        ]);
        assert!(all.contains("8000") && !all.contains("1001"), "{all}");
        let json = ctl.ok(&["--json", "users", "get", "-d", "acme", "1001"]);
        assert!(
            json.contains("\"scope\": \"SCOPE_OFFICE_MANAGER\""),
            "{json}"
        );

        // One-line errors, non-zero exit.
        let (ok, _, err) = ctl.run(&["users", "get", "-d", "acme", "9999"]);
        assert!(!ok);
        assert_eq!(
            err.trim(),
            "error: not_found: user 9999 not found in domain acme"
        );
        let (ok, _, err) = ctl.run(&["phones", "add", "-d", "acme", "--user", "1001", "zz:zz"]);
        assert!(
            !ok && err.starts_with("error: invalid_argument: invalid mac"),
            "{err}"
        );

        // Phones, options, queues.
        ctl.ok(&[
            "phones",
            "add",
            "-d",
            "acme",
            "--user",
            "1002",
            "00:04:F2:AA:BB:CC",
            "--key",
            "1:line:1002",
            "--key",
            "2:blf:1001:Jack",
        ]);
        assert!(
            ctl.ok(&["phones", "list", "-d", "acme"])
                .contains("0004f2aabbcc")
        );
        let rules = ctl.ok(&[
            "options",
            "rules",
            "-d",
            "acme",
            "1002",
            "--rule",
            "busy:voicemail",
            "--rule",
            "no-answer:user=1001:25",
        ]);
        assert!(rules.contains("no_answer -> user 1001 (25s)"), "{rules}");

        // Presence permissions.
        ctl.ok(&[
            "policy",
            "settings",
            "-d",
            "acme",
            "1002",
            "--visibility",
            "permitted-users",
        ]);
        let g = ctl.ok(&[
            "policy",
            "grants",
            "-d",
            "acme",
            "1002",
            "--see",
            "site:hq",
            "--pickup",
            "user:1001",
        ]);
        assert!(g.contains("site:hq") && g.contains("user:1001"), "{g}");
        let check = ctl.ok(&["policy", "check", "-d", "acme", "1001", "1002", "8000"]);
        assert!(
            check
                .lines()
                .any(|l| l.starts_with("1002") && l.contains("yes")),
            "{check}"
        );
        let why = ctl.ok(&["policy", "explain", "-d", "acme", "8000", "1002"]);
        assert!(
            why.contains("denied") && why.contains("has granted nothing to 8000"),
            "{why}"
        );
        let why = ctl.ok(&["policy", "explain", "-d", "acme", "1001", "1002"]);
        assert!(
            why.contains("allowed") && why.contains("office-manager"),
            "{why}"
        );
        let watchers = ctl.ok(&["policy", "watchers", "-d", "acme", "1002"]);
        assert!(watchers.contains("1001"), "{watchers}");

        // Login saves a token in ~/.config/presence/token.
        let out = Command::new(env!("CARGO_BIN_EXE_presencectl"))
            .env("PRESENCE_URL", &ctl.url)
            .env("HOME", ctl.home.path())
            .env_remove("PRESENCE_TOKEN")
            .args([
                "login",
                "--domain",
                "acme",
                "--user",
                "1001",
                "--password",
                "a long passphrase",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let saved = ctl.home.path().join(".config/presence/token");
        assert!(saved.exists());
        let out = Command::new(env!("CARGO_BIN_EXE_presencectl"))
            .env("PRESENCE_URL", &ctl.url)
            .env("HOME", ctl.home.path())
            .env_remove("PRESENCE_TOKEN")
            .args(["whoami"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("acme/1001"));
    })
    .await
    .unwrap();
    server.stop().await;
}

/// `presence publish` drives a user's lamp, `presence get` reads it and
/// `presence watch` follows it (NDJSON with --json, one line per change
/// on a pipe); a rejected event is a one-line error naming the value at
/// fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_presencectl_presence_get_watch_publish() {
    use std::io::BufRead;
    let (ctl, server) = start().await;
    tokio::task::spawn_blocking(move || {
        ctl.ok(&["domains", "create", "acme"]);
        ctl.ok(&["users", "create", "-d", "acme", "1001", "--first-name", "Jack"]);
        let pub_ = |args: &[&str]| {
            let mut a = vec!["presence", "publish", "-d", "acme", "--user", "1001"];
            a.extend_from_slice(args);
            ctl.run(&a)
        };
        let (ok, out, err) = pub_(&["--device", "d1", "--seq", "1", "register"]);
        assert!(ok, "{err}");
        assert!(out.contains("accepted"), "{out}");
        let got = ctl.ok(&["presence", "get", "-d", "acme", "1001", "nobody"]);
        let row = got.lines().find(|l| l.starts_with("1001")).unwrap();
        assert!(row.contains("available") && row.contains("no-call"), "{got}");
        assert!(got.lines().any(|l| l.starts_with("nobody") && l.contains("not visible")), "{got}");
        let json = ctl.ok(&["presence", "get", "-d", "acme", "1001", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["states"][0]["presence"], "available", "{json}");

        // A watch in another process: the snapshot, then one change.
        let mut child = Command::new(env!("CARGO_BIN_EXE_presencectl"))
            .env("PRESENCE_URL", &ctl.url)
            .env("PRESENCE_TOKEN", &ctl.token)
            .env("HOME", ctl.home.path())
            .args(["presence", "watch", "-d", "acme", "--watcher", "1001"])
            .args(["--targets", "1001", "--json", "--count", "2"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = || -> serde_json::Value {
            serde_json::from_str(&lines.next().expect("watch ended").unwrap()).unwrap()
        };
        let first = next();
        assert_eq!((first["event"].as_str(), first["presence"].as_str()), (Some("state"), Some("available")), "{first}");
        assert_eq!(next()["event"], "snapshot_done");
        let (ok, _, err) = pub_(&["--device", "d1", "--seq", "2", "ring", "--from", "+15550100", "--name", "Rita"]);
        assert!(ok, "{err}");
        let ringing = next();
        assert_eq!(ringing["telephony"], "ringing", "{ringing}");
        assert_eq!(ringing["calls"][0]["remote_number"], "+15550100", "{ringing}");
        assert!(ringing["version"].as_u64() > first["version"].as_u64());
        // --count 2: the watch exits by itself after the second state.
        assert!(child.wait().unwrap().success());

        // On a pipe (not a terminal), one line per change.
        let lines = ctl.ok(&["presence", "watch", "-d", "acme", "--watcher", "1001", "--targets", "1001", "--count", "1"]);
        assert!(lines.lines().any(|l| l.starts_with("1001") && l.contains("ringing") && l.contains("from Rita <+15550100>")), "{lines}");
        assert!(!lines.contains('\x1b'), "no redraw codes on a pipe: {lines:?}");

        // A stale sequence is refused with the detail.
        let (ok, _, err) = pub_(&["--device", "d1", "--seq", "2", "hangup"]);
        assert!(!ok);
        assert_eq!(
            err.trim(),
            "error: rejected: stale-sequence: sequence 2 of device d1 is not above its last applied one, 2"
        );
        // A token issued, used, revoked, refused.
        let issued = ctl.ok(&["--json", "token", "issue", "--service", "gw", "--domain", "acme", "--right", "presence.watch"]);
        let v: serde_json::Value = serde_json::from_str(&issued).unwrap();
        let (tok, id) = (v["token"].as_str().unwrap(), v["token_id"].as_str().unwrap());
        assert_eq!(id.len(), 32, "{issued}");
        let as_gw = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_presencectl"))
                .env("PRESENCE_URL", &ctl.url)
                .env("PRESENCE_TOKEN", tok)
                .env("HOME", ctl.home.path())
                .args(args)
                .output()
                .unwrap()
        };
        assert!(as_gw(&["whoami"]).status.success());
        let out = ctl.ok(&["token", "revoke", tok]);
        assert_eq!(out.trim(), format!("token {id} revoked"));
        let refused = as_gw(&["whoami"]);
        assert!(!refused.status.success());
        assert_eq!(String::from_utf8_lossy(&refused.stderr).trim(), "error: unauthenticated: token revoked");
        // A watch needs exactly one selection.
        let (ok, _, err) = ctl.run(&["presence", "watch", "-d", "acme", "--everyone", "--monitored"]);
        assert!(!ok && err.contains("cannot be used with"), "{err}");
    })
    .await
    .unwrap();
    server.stop().await;
}
