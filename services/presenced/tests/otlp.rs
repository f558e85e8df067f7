//! Traces over OTLP, received by a real OTLP/gRPC collector endpoint (the
//! `TraceService` of `opentelemetry-proto`) from two presenced processes
//! sharing one nats-server. A change is one trace across both nodes and
//! NATS: a gRPC `Publish` on node a, applied by the owner of the user's
//! shard on node b (the context crossed in the input log), delivered to
//! the watch streams of both nodes (it crossed to a in the header of the
//! `presence.v1.out.*` message); and an event a PBX publishes on NATS
//! with a `traceparent` header continues the PBX's trace the same way.
//! The embedded broker (one process, in-process bus) links its spans
//! alike.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use async_nats::jetstream;
use common::{acme, bootstrap_token, node_with, wait_spread};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use presence_client::{PresenceClient, connect};
use presence_core::{DomainId, UserId};
use presence_proto::v1::{self, device_event::Kind as K, watch_event::Event as E};
use presence_testkit::NatsServer;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

const SHARDS: usize = 8;

/// One received span, with the node that sent it.
#[derive(Debug, Clone)]
struct Got {
    node: String,
    name: String,
    kind: i32,
    trace_id: u128,
    span_id: u64,
    parent: u64,
    attrs: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn id<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    if b.len() == N {
        out.copy_from_slice(b);
    }
    out
}

/// The collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in req.into_inner().resource_spans {
            let node = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.instance.id")
                .map(text)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        node: node.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: u128::from_be_bytes(id(&s.trace_id)),
                        span_id: u64::from_be_bytes(id(&s.span_id)),
                        parent: u64::from_be_bytes(id(&s.parent_span_id)),
                        attrs: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv)))
                            .collect(),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(got);
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Waits until `done` holds for the spans received so far.
    async fn until<T>(&self, what: &str, done: impl Fn(&[Got]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let arrived = self.arrived.notified();
            if let Some(t) = done(&self.spans.lock().unwrap()) {
                return t;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "{what}: never received; got {:#?}",
                    self.spans.lock().unwrap()
                );
            }
        }
    }
}

/// The spans of one trace, once it has an apply span and a delivery on
/// each node.
fn trace_of(spans: &[Got], trace: u128) -> Option<Vec<Got>> {
    let t: Vec<Got> = spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect();
    let delivered = |node: &str| {
        t.iter()
            .any(|s| s.name == "presence.deliver" && s.node == node)
    };
    (t.iter().any(|s| s.name == "presence.apply") && delivered("a") && delivered("b")).then_some(t)
}

fn one<'a>(t: &'a [Got], name: &str, node: &str) -> &'a Got {
    let found: Vec<&Got> = t
        .iter()
        .filter(|s| s.name == name && s.node == node)
        .collect();
    assert_eq!(found.len(), 1, "one {name} on {node}: {t:#?}");
    found[0]
}

/// Checks the owner's apply span (child of `parent`) and the deliveries
/// on both nodes (children of the apply span): the local one on the
/// owner, the other over NATS.
fn check_apply_and_deliveries(t: &[Got], owner: &str, other: &str, parent: u64) -> u64 {
    let apply = one(t, "presence.apply", owner);
    assert_eq!(
        apply.parent, parent,
        "applied in the caller's trace: {t:#?}"
    );
    assert_eq!(apply.kind, SpanKind::Consumer as i32);
    assert_eq!(apply.attr("outcome"), Some("changed"), "{apply:?}");
    assert_eq!(apply.attr("domain"), Some("acme"));
    for (node, via) in [(owner, "local"), (other, "bus")] {
        let d = one(t, "presence.deliver", node);
        assert_eq!(d.parent, apply.span_id, "{d:?} follows the apply span");
        assert_eq!(d.attr("via"), Some(via), "{d:?}");
        assert_eq!(
            d.attr("watchers"),
            Some("1"),
            "{d:?}: one watch stream there"
        );
    }
    apply.span_id
}

async fn watch(c: &mut PresenceClient, target: &str) -> tonic::Streaming<v1::WatchEvent> {
    let mut s = c
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            watcher: "boss".into(),
            selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
                targets: vec![target.into()],
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The snapshot: the stream is registered on its node's edge.
    loop {
        let m = s.message().await.unwrap().unwrap();
        if matches!(m.event, Some(E::SnapshotDone(_))) {
            return s;
        }
    }
}

/// Waits for a state of the target that satisfies `done` on the stream.
async fn until_state(
    s: &mut tonic::Streaming<v1::WatchEvent>,
    done: impl Fn(&v1::PresenceState) -> bool,
) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("no state")
            .unwrap()
            .unwrap();
        if let Some(E::State(st)) = m.event
            && done(&st)
        {
            return;
        }
    }
}

fn event(user: &str, sequence: u64, kind: K) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: "acme".into(),
        user: user.into(),
        device: format!("dev-{user}"),
        sequence,
        at_ms: 0,
        kind: Some(kind),
    }
}

/// Starts the collector on a free loopback port; returns its URL.
async fn collector() -> (Collector, String, tokio::task::JoinHandle<()>) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let serve = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let task = tokio::spawn(async move {
        serve.await.unwrap();
    });
    (collector, otlp, task)
}

/// A traceparent value.
fn traceparent(trace: u128, span: u64) -> String {
    format!("00-{trace:032x}-{span:016x}-01")
}

fn registration(user: &str) -> v1::DeviceEvent {
    event(
        user,
        1,
        K::Registration(v1::Registration {
            expires_seconds: 3600,
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_the_embedded_broker_links_publish_apply_and_deliver() {
    let (collector, otlp, serve) = collector().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("PRESENCE_NODE_ID", "solo");
    let (_p, url) = presence_testkit::spawn_ready_logged(
        cmd,
        &tmp.path().join("ready"),
        "presenced",
        Some(&tmp.path().join("log")),
    );
    let mut admin = connect(&url, Some(&bootstrap_token(&tmp.path().join("data"))))
        .await
        .unwrap();
    admin.directory.create_domain(acme()).await.unwrap();
    for (id, scope) in [
        ("boss", v1::Scope::OfficeManager),
        ("1001", v1::Scope::CallCenterAgent),
    ] {
        let mut u = common::user(id);
        u.scope = scope as i32;
        admin.directory.create_user(u).await.unwrap();
    }
    let mut s = watch(&mut admin, "1001").await;
    let (trace, span) = (
        0x1111_2222_3333_4444_5555_6666_7777_8888u128,
        0x99aa_bbcc_ddee_ff00u64,
    );
    let mut req = tonic::Request::new(v1::PublishRequest {
        events: vec![registration("1001")],
    });
    req.metadata_mut()
        .insert("traceparent", traceparent(trace, span).parse().unwrap());
    let r = admin.presence.publish(req).await.unwrap().into_inner();
    assert!(r.results[0].accepted, "{r:?}");
    until_state(&mut s, |st| {
        st.presence == v1::PresenceStatus::Available as i32
    })
    .await;
    let t = collector
        .until("the embedded trace", |all| {
            let t: Vec<Got> = all
                .iter()
                .filter(|s| s.trace_id == trace)
                .cloned()
                .collect();
            t.iter().any(|s| s.name == "presence.deliver").then_some(t)
        })
        .await;
    let call = one(&t, "/presence.v1.PresenceService/Publish", "solo");
    assert_eq!(call.parent, span);
    let apply = one(&t, "presence.apply", "solo");
    assert_eq!(apply.parent, call.span_id);
    let d = one(&t, "presence.deliver", "solo");
    assert_eq!(d.parent, apply.span_id);
    assert_eq!(d.attr("via"), Some("local"));
    serve.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_change_is_one_trace_across_nodes_and_nats() {
    let (collector, otlp, serve) = collector().await;

    let nats = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let shards = SHARDS.to_string();
    let env = |roles: &'static str| {
        [
            ("PRESENCE_JETSTREAM_REPLICAS", "1"),
            ("PRESENCE_ROLES", roles),
            ("PRESENCE_SHARDS", shards.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            // Spans leave within 50 ms (the SDK's default is 5 s).
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ]
    };
    let (_a, url_a) = node_with(dir, "a", nats.url(), None, &env("directory,policy,fanout"));
    let key = dir.join("a/auth.key");
    let (mut b, url_b) = node_with(dir, "b", nats.url(), Some(&key), &env("fanout"));
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let owners = wait_spread(&jetstream::new(nc.clone()), SHARDS, &["a", "b"]).await;

    // A user whose shard node b owns.
    let acme_id = DomainId::parse("acme").unwrap();
    let agent = (0..)
        .map(|i| format!("agent{i}"))
        .find(|u| {
            let n =
                presence_fanout::shard::shard_index(&acme_id, &UserId::parse(u).unwrap(), SHARDS);
            owners[n] == "b"
        })
        .unwrap();
    let mut admin = connect(&url_a, Some(&bootstrap_token(&dir.join("a"))))
        .await
        .unwrap();
    admin.directory.create_domain(acme()).await.unwrap();
    for (id, scope) in [
        ("boss", v1::Scope::OfficeManager),
        (agent.as_str(), v1::Scope::CallCenterAgent),
    ] {
        let mut u = common::user(id);
        u.scope = scope as i32;
        admin.directory.create_user(u).await.unwrap();
    }
    let gateway = admin
        .auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Service(
                v1::ServicePrincipal {
                    name: "gateway".into(),
                    domains: vec!["acme".into()],
                    rights: vec!["presence.watch".into(), "presence.publish".into()],
                },
            )),
            ttl_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    // The office manager's consoles on both nodes watch the agent; node b
    // must know the user before its edge serves the stream.
    let mut gw_a = connect(&url_a, Some(&gateway)).await.unwrap();
    let mut gw_b = connect(&url_b, Some(&gateway)).await.unwrap();
    let mut on_a = watch(&mut gw_a, &agent).await;
    let mut on_b = loop {
        if gw_b
            .presence
            .get_presence(v1::GetPresenceRequest {
                domain: "acme".into(),
                targets: vec![agent.clone()],
            })
            .await
            .is_ok_and(|r| r.into_inner().denied.is_empty())
        {
            break watch(&mut gw_b, &agent).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut out = nc
        .subscribe(format!("presence.v1.out.acme.{agent}"))
        .await
        .unwrap();
    nc.flush().await.unwrap();

    // 1. A gRPC Publish on node a, in the trace of a caller's span.
    let caller_trace: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    let caller_span: u64 = 0x00f0_67aa_0ba9_02b7;
    let mut req = tonic::Request::new(v1::PublishRequest {
        events: vec![registration(&agent)],
    });
    req.metadata_mut().insert(
        "traceparent",
        traceparent(caller_trace, caller_span).parse().unwrap(),
    );
    let r = gw_a.presence.publish(req).await.unwrap().into_inner();
    assert!(r.results[0].accepted, "{r:?}");
    let available = |st: &v1::PresenceState| st.presence == v1::PresenceStatus::Available as i32;
    until_state(&mut on_a, available).await;
    until_state(&mut on_b, available).await;

    // The change went out on NATS with the owner's span in its header.
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut out),
    )
    .await
    .unwrap()
    .unwrap();
    let header = m
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_owned())
        .expect("a traceparent header on presence.v1.out.*");
    assert!(
        header.starts_with(&format!("00-{caller_trace:032x}-")),
        "{header}"
    );
    // The input log's entry carries the trace to the owner.
    let js = jetstream::new(nc.clone());
    let entry = js
        .get_stream("PRESENCE_INGEST")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("presence.v1.admitted")
        .await
        .unwrap();
    let batch = v1::IngestBatch::decode(entry.payload).unwrap();
    assert!(
        batch.items[0]
            .traceparent
            .starts_with(&format!("00-{caller_trace:032x}-")),
        "{batch:?}"
    );

    let t = collector
        .until("the Publish trace", |s| trace_of(s, caller_trace))
        .await;
    let call = one(&t, "/presence.v1.PresenceService/Publish", "a");
    assert_eq!(call.parent, caller_span, "the caller's span is the parent");
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert_eq!(call.attr("rpc.system"), Some("grpc"));
    assert_eq!(call.attr("rpc.method"), Some("Publish"));
    let apply = check_apply_and_deliveries(&t, "b", "a", call.span_id);
    assert!(header.contains(&format!("-{apply:016x}-")), "{header}");

    // 2. A PBX publishes on NATS, in its own trace.
    let pbx_trace: u128 = 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c;
    let pbx_span: u64 = 0xb7ad_6b71_6920_3331;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent(pbx_trace, pbx_span).as_str());
    let ringing = event(
        &agent,
        2,
        K::Call(v1::CallUpdate {
            call_id: "c1".into(),
            state: v1::CallState::Early as i32,
            direction: v1::Direction::Inbound as i32,
            remote_number: "+15550100".into(),
            remote_name: "Caller".into(),
        }),
    );
    nc.publish_with_headers(
        format!("presence.v1.in.acme.{agent}"),
        headers,
        ringing.encode_to_vec().into(),
    )
    .await
    .unwrap();
    let ringing = |st: &v1::PresenceState| st.telephony == v1::TelephonyStatus::Ringing as i32;
    until_state(&mut on_a, ringing).await;
    until_state(&mut on_b, ringing).await;
    let t = collector
        .until("the PBX's trace", |s| trace_of(s, pbx_trace))
        .await;
    // Taken in by the owner of the user's shard, which admits it.
    let ingest = one(&t, "presence.ingest", "b");
    assert_eq!(ingest.parent, pbx_span, "the PBX's span is the parent");
    assert_eq!(ingest.attr("messaging.system"), Some("nats"));
    check_apply_and_deliveries(&t, "b", "a", ingest.span_id);

    // Only request-path spans are exported: after a clean stop (which
    // flushes what is left), nothing else arrived from b.
    b.terminate(Duration::from_secs(20)).unwrap();
    let spans = collector.spans.lock().unwrap().clone();
    for s in spans.iter().filter(|s| s.node == "b") {
        assert!(
            s.name.starts_with('/') || s.name.starts_with("presence."),
            "a span of a long-lived task was exported: {s:?}"
        );
    }
    serve.abort();
}
