//! The same Bus contract against the in-process bus and a real
//! nats-server started by the test on a free port.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures_util::StreamExt;
use presence_bus::nats::NatsConfig;
use presence_bus::{BusMessage, BusSubscription, InProcessBus, NatsBus, SharedBus};
use presence_tests::NatsServer;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

async fn next(sub: &mut BusSubscription) -> BusMessage {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("no message within 10s")
        .expect("subscription ended")
}

async fn publish(bus: &SharedBus, subject: &str, payload: &str) {
    bus.publish(subject.into(), Bytes::from(payload.to_owned()))
        .await
        .unwrap();
}

async fn contract(bus: SharedBus) {
    // Exact subjects, in publish order.
    let mut exact = bus.subscribe("t.exact".into()).await.unwrap();
    bus.flush().await.unwrap();
    for i in 0..50 {
        publish(&bus, "t.exact", &i.to_string()).await;
    }
    for i in 0..50 {
        let m = next(&mut exact).await;
        assert_eq!(
            (m.subject.as_str(), m.payload.as_ref()),
            ("t.exact", i.to_string().as_bytes())
        );
    }

    // `*` matches one token, `>` the rest; a sentinel proves that
    // non-matching messages were skipped.
    let mut star = bus.subscribe("t.*.c".into()).await.unwrap();
    let mut tail = bus.subscribe("t.tail.>".into()).await.unwrap();
    bus.flush().await.unwrap();
    publish(&bus, "t.x.c", "1").await;
    publish(&bus, "t.x.y.c", "no").await;
    publish(&bus, "t.x.d", "no").await;
    publish(&bus, "t.z.c", "2").await;
    assert_eq!(next(&mut star).await.payload.as_ref(), b"1");
    assert_eq!(next(&mut star).await.subject, "t.z.c");
    publish(&bus, "t.tail", "no").await;
    publish(&bus, "t.tail.a", "1").await;
    publish(&bus, "t.tail.a.b.c", "2").await;
    assert_eq!(next(&mut tail).await.subject, "t.tail.a");
    assert_eq!(next(&mut tail).await.subject, "t.tail.a.b.c");

    // A queue group delivers each message to exactly one member.
    let mut q1 = bus
        .queue_subscribe("t.q.*".into(), "workers".into())
        .await
        .unwrap();
    let mut q2 = bus
        .queue_subscribe("t.q.*".into(), "workers".into())
        .await
        .unwrap();
    let mut all = bus.subscribe("t.q.*".into()).await.unwrap();
    bus.flush().await.unwrap();
    for i in 0..40 {
        publish(&bus, &format!("t.q.{i}"), "x").await;
    }
    let mut seen = BTreeSet::new();
    let mut count = 0;
    while count < 40 {
        let m = tokio::select! {
            m = next(&mut q1) => m,
            m = next(&mut q2) => m,
        };
        assert!(seen.insert(m.subject), "delivered twice");
        count += 1;
    }
    for i in 0..40 {
        assert_eq!(
            next(&mut all).await.subject,
            format!("t.q.{i}"),
            "plain subscribers get everything"
        );
    }

    // Invalid subjects are refused, valid ones still work.
    for bad in ["", "a..b", "a.*", "a.>", "a b"] {
        assert!(
            bus.publish(bad.into(), Bytes::new()).await.is_err(),
            "publish {bad:?}"
        );
    }
    for bad in ["", "a..b", "a.>.b", "a*"] {
        assert!(
            bus.subscribe(bad.into()).await.is_err(),
            "subscribe {bad:?}"
        );
    }

    // Request/reply: a responder answers on the reply subject; a request
    // nobody listens to fails fast with Unavailable.
    let mut responder = bus
        .queue_subscribe("t.echo".into(), "echo".into())
        .await
        .unwrap();
    bus.flush().await.unwrap();
    let echo = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let m = next(&mut responder).await;
            let mut out = b"re:".to_vec();
            out.extend_from_slice(&m.payload);
            bus.publish(m.reply.unwrap(), Bytes::from(out))
                .await
                .unwrap();
        })
    };
    let answer = bus
        .request(
            "t.echo".into(),
            Bytes::from_static(b"ping"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(answer.as_ref(), b"re:ping");
    echo.await.unwrap();
    let r = bus
        .request(
            "t.nobody".into(),
            Bytes::from_static(b"?"),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(r, Err(presence_bus::BusError::Unavailable(_))),
        "{r:?}"
    );

    // A group spans literal and wildcard members: still one delivery.
    let mut g1 = bus
        .queue_subscribe("t.mix.a".into(), "mix".into())
        .await
        .unwrap();
    let mut g2 = bus
        .queue_subscribe("t.mix.*".into(), "mix".into())
        .await
        .unwrap();
    bus.flush().await.unwrap();
    for _ in 0..20 {
        publish(&bus, "t.mix.a", "m").await;
    }
    publish(&bus, "t.mix.b", "end").await;
    let (mut n1, mut n2) = (0, 0);
    loop {
        tokio::select! {
            _ = next(&mut g1) => n1 += 1,
            m = next(&mut g2) => {
                if m.payload.as_ref() == b"end" {
                    break;
                }
                n2 += 1;
            }
        }
    }
    // Messages to g1 sent before "end" are already in its queue (one
    // connection delivers in order).
    while let Some(Some(_)) = futures_util::FutureExt::now_or_never(g1.next()) {
        n1 += 1;
    }
    assert_eq!(n1 + n2, 20, "each message to exactly one group member");

    // A dropped responder no longer answers: the request finds nobody.
    let gone = bus
        .queue_subscribe("t.gone".into(), "gone".into())
        .await
        .unwrap();
    drop(gone);
    bus.flush().await.unwrap();
    let r = bus
        .request("t.gone".into(), Bytes::new(), Duration::from_secs(5))
        .await;
    assert!(
        matches!(r, Err(presence_bus::BusError::Unavailable(_))),
        "{r:?}"
    );

    // Dropping a subscription unsubscribes; publishing still works.
    drop(exact);
    publish(&bus, "t.exact", "after drop").await;
    bus.flush().await.unwrap();
}

#[tokio::test]
async fn test_inprocess_bus_contract() {
    contract(Arc::new(InProcessBus::new(1024))).await;
}

#[tokio::test]
async fn test_nats_bus_contract() {
    let server = NatsServer::start();
    let bus = NatsBus::connect(&NatsConfig {
        url: server.url().into(),
        subscription_capacity: 1024,
        connection_name: "contract".into(),
        connect_timeout: Duration::from_secs(5),
        security: Default::default(),
    })
    .await
    .unwrap();
    assert_eq!(presence_bus::Bus::kind(&bus), "nats");
    contract(Arc::new(bus)).await;
}

#[tokio::test]
async fn test_nats_connect_failure_is_unavailable() {
    // A port nothing listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = NatsBus::connect(&NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        subscription_capacity: 16,
        connection_name: "nowhere".into(),
        connect_timeout: Duration::from_millis(500),
        security: Default::default(),
    })
    .await;
    assert!(matches!(r, Err(presence_bus::BusError::Unavailable(_))));
}

#[tokio::test]
async fn test_inprocess_slow_subscriber_loses_newest_not_publisher_time() {
    let bus: SharedBus = Arc::new(InProcessBus::new(4));
    let mut slow = bus.subscribe("s.>".into()).await.unwrap();
    let mut fast = bus.subscribe("s.>".into()).await.unwrap();
    for i in 0..10 {
        // Never blocks although `slow` is not reading.
        publish(&bus, "s.x", &i.to_string()).await;
        assert_eq!(
            next(&mut fast).await.payload.as_ref(),
            i.to_string().as_bytes()
        );
    }
    for i in 0..4 {
        assert_eq!(
            next(&mut slow).await.payload.as_ref(),
            i.to_string().as_bytes()
        );
    }
    // Its queue has room again: the next message arrives, 4..9 were dropped.
    publish(&bus, "s.x", "10").await;
    assert_eq!(next(&mut slow).await.payload.as_ref(), b"10");
}
