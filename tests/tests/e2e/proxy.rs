//! The PROXY protocol behind a load balancer: accepted only from the configured balancer
//! addresses, required from them, and then the client address it names is what the policy,
//! the per-IP limits and the logs see. Versions 1 (text) and 2 (binary), in front of plain
//! MQTT and in front of TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use moat::codec::{ProtocolVersion, ReasonCode};
use moat::config::{ListenerConfig, Protocol};
use moat::metrics::Limit;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::certs;
use crate::harness::{RawClient, TestBroker, raw_connect_packet};
use crate::tls::{Pki, Recorder, listener, start_full};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A listener trusting balancers on 127.0.0.1 only.
fn behind_balancer(protocol: Protocol, tls: Option<moat::config::TlsConfig>) -> ListenerConfig {
    ListenerConfig {
        proxy_protocol_from: vec!["127.0.0.1/32".parse().unwrap()],
        ..listener(protocol, tls)
    }
}

async fn tcp_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let s = socket.connect(to).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn v1(client: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {client} 10.0.0.1 {port} 1883\r\n").into_bytes()
}

/// A v2 PROXY (command 1) header for an IPv6 TCP client.
fn v2_tcp6(client: std::net::Ipv6Addr, port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x21]);
    h.extend(36u16.to_be_bytes());
    h.extend(client.octets());
    h.extend(std::net::Ipv6Addr::LOCALHOST.octets());
    h.extend(port.to_be_bytes());
    h.extend(1883u16.to_be_bytes());
    h
}

/// Sends `header` and then CONNECT for `id` over a connection from the balancer (127.0.0.1);
/// returns the client and the CONNACK's reason code.
async fn through_balancer(b: &TestBroker, header: &[u8], id: &str) -> (RawClient, ReasonCode) {
    let mut s = tcp_from("127.0.0.1", b.addr).await;
    s.write_all(header).await.unwrap();
    let mut c = RawClient::over(s, V5);
    let ack = c.connack(raw_connect_packet(V5, id, true)).await;
    (c, ack.reason_code)
}

/// A broker with listener `l` and a policy that records every client.
async fn recorded(l: ListenerConfig) -> (TestBroker, Arc<Recorder>) {
    let policy = Arc::new(Recorder::default());
    let b = start_full(vec![l], policy.clone(), |_| {}).await;
    (b, policy)
}

/// v1 and v2 headers name the client the policy sees; a v2 LOCAL health check is served as
/// the balancer itself.
#[tokio::test]
async fn the_policy_sees_the_client_the_header_names() {
    let (b, policy) = recorded(behind_balancer(Protocol::Tcp, None)).await;
    let (_c, r) = through_balancer(&b, &v1("192.0.2.7", 51000), "v1").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    assert_eq!(
        policy.last().remote_addr,
        "192.0.2.7:51000".parse::<SocketAddr>().unwrap()
    );
    let ip: std::net::Ipv6Addr = "2001:db8::42".parse().unwrap();
    let (_c, r) = through_balancer(&b, &v2_tcp6(ip, 40000), "v2").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    assert_eq!(
        policy.last().remote_addr,
        "[2001:db8::42]:40000".parse::<SocketAddr>().unwrap()
    );
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend([0x20, 0x00, 0x00, 0x00]);
    let (_c, r) = through_balancer(&b, &local, "health").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    assert_eq!(policy.last().remote_addr.ip().to_string(), "127.0.0.1");
    b.stop().await;
}

/// Per-IP limits count the real clients, not the balancer: two clients behind one balancer
/// each get their place, a second connection of the same client is over its quota.
#[tokio::test]
async fn per_ip_limits_count_the_real_client() {
    let b = start_full(
        vec![behind_balancer(Protocol::Tcp, None)],
        Arc::new(moat::policy::AllowAll),
        |c| c.limits.max_connections_per_ip = Some(1),
    )
    .await;
    let (_a, r) = through_balancer(&b, &v1("198.51.100.1", 1000), "a").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    let (_b, r) = through_balancer(&b, &v1("198.51.100.2", 1000), "b").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    let (_a2, r) = through_balancer(&b, &v1("198.51.100.1", 1001), "a2").await;
    assert_eq!(r, ReasonCode::QUOTA_EXCEEDED);
    b.stop().await;
}

/// From a trusted balancer the header is required (a bare CONNECT is closed and counted);
/// from any other address it is never accepted (a header is just bad MQTT there), while a
/// plain MQTT client from that address is served as itself.
#[tokio::test]
async fn the_header_is_required_from_balancers_and_refused_from_others() {
    let (b, policy) = recorded(behind_balancer(Protocol::Tcp, None)).await;
    let mut bare = RawClient::over(tcp_from("127.0.0.1", b.addr).await, V5);
    bare.send(&moat::codec::Packet::Connect(Box::new(raw_connect_packet(
        V5, "bare", true,
    ))))
    .await;
    assert!(bare.closed().await.is_empty());
    assert_eq!(b.broker.metrics().limited(Limit::ProxyHeader), 1);

    let mut spoof = tcp_from("127.0.0.2", b.addr).await;
    spoof.write_all(&v1("192.0.2.99", 1)).await.unwrap();
    let mut spoof = RawClient::over(spoof, V5);
    spoof
        .send(&moat::codec::Packet::Connect(Box::new(raw_connect_packet(
            V5, "spoof", true,
        ))))
        .await;
    assert!(spoof.closed().await.iter().all(
        |p| !matches!(p, moat::codec::Packet::ConnAck(a) if a.reason_code == ReasonCode::SUCCESS)
    ));

    let mut direct = RawClient::over(tcp_from("127.0.0.2", b.addr).await, V5);
    let ack = direct.connack(raw_connect_packet(V5, "direct", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(policy.last().remote_addr.ip().to_string(), "127.0.0.2");
    b.stop().await;
}

/// A TCP-mode balancer in front of a TLS listener: the header comes before the TLS handshake.
#[tokio::test]
async fn the_header_precedes_tls() {
    let pki = Pki::new();
    let (b, policy) = recorded(behind_balancer(Protocol::Tls, Some(pki.tls()))).await;
    let mut tcp = tcp_from("127.0.0.1", b.addr).await;
    tcp.write_all(&v1("203.0.113.5", 6000)).await.unwrap();
    let tls = certs::connect_over(tcp, "localhost", certs::client_config(&pki.ca, None))
        .await
        .unwrap();
    let mut c = RawClient::over(tls, V5);
    let ack = c.connack(raw_connect_packet(V5, "tls-behind", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let seen = policy.last();
    assert_eq!(
        seen.remote_addr,
        "203.0.113.5:6000".parse::<SocketAddr>().unwrap()
    );
    assert!(seen.tls.is_some());
    b.stop().await;
}
