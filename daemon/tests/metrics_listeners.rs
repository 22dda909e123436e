//! Health that a pod cannot starve (issue 12): the probes have a listener of their own, each
//! listener limits the connections of one peer address, and idle connections are closed.
//! Before, metrics and health shared one listener with a 32-connection budget, so 32 idle
//! connections from anyone made every probe fail.

use std::{net::SocketAddr, time::Duration};

use imagegate::metrics::{Listen, Routes, Server};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn connect_from(source: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    socket.connect(to).await.expect("connect")
}

/// The status of one request, `None` when the server closed the connection without answering.
async fn get(source: &str, to: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = connect_from(source, to).await;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn tcp(server: &Server) -> SocketAddr {
    match &server.local {
        Listen::Tcp(addr) => *addr,
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_starve_the_probes() {
    imagegate::metrics::global().backend_attached("test");
    imagegate::metrics::global().reconciled(true);
    let metrics = Server::start_serving(
        Listen::Tcp("127.0.0.1:0".parse().expect("address")),
        Routes::All,
    )
    .await
    .expect("metrics listener");
    let health = Server::start_serving(
        Listen::Tcp("127.0.0.1:0".parse().expect("address")),
        Routes::Health,
    )
    .await
    .expect("health listener");
    let (metrics_addr, health_addr) = (tcp(&metrics), tcp(&health));

    // 64 idle connections against the metrics listener, from two addresses.
    let mut idle = Vec::new();
    for i in 0..64 {
        let source = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
        idle.push(connect_from(source, metrics_addr).await);
    }
    // The probes, polled meanwhile on their own listener, stay 200.
    for _ in 0..20 {
        assert_eq!(get("127.0.0.1", health_addr, "/healthz").await, Some(200));
        assert_eq!(get("127.0.0.1", health_addr, "/readyz").await, Some(200));
    }
    // The health listener serves nothing else.
    assert_eq!(get("127.0.0.1", health_addr, "/metrics").await, Some(404));
    // Two peers hold at most 4 connections each: a third peer is still served on the metrics
    // listener (health included, as before).
    assert_eq!(get("127.0.0.1", metrics_addr, "/metrics").await, Some(200));
    assert_eq!(get("127.0.0.1", metrics_addr, "/healthz").await, Some(200));
    // A peer over its limit is closed at once, without an answer.
    assert_eq!(get("127.0.0.2", metrics_addr, "/metrics").await, None);

    // Idle connections are closed by the server (their slots freed).
    for stream in &mut idle {
        let mut byte = [0_u8; 1];
        let read = stream.read(&mut byte).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "an idle connection is closed: {read:?}"
        );
    }
    drop(idle);
    // Its slots freed, that peer is served again.
    let mut served = None;
    for _ in 0..50 {
        served = get("127.0.0.2", metrics_addr, "/metrics").await;
        if served.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served, Some(200));
}
