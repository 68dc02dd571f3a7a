//! TLS listeners with real peers: `openssl s_client` for protocol versions and ALPN,
//! `mosquitto_pub`/`mosquitto_sub` with `--cafile`, `--cert` and `--key`, and a rustls client
//! for what only a library can check (the SNI it sends, the certificate it is shown). Every
//! certificate is made by the test (see `certs`).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat::codec::{ProtocolVersion, QoS, ReasonCode};
use moat::config::{ClientCerts, IdentityAsUsername, ListenerConfig, Protocol, TlsConfig};
use moat::metrics::Limit;
use moat::pending::Pending;
use moat::policy::{
    AllowAll, AuthOutcome, ClientInfo, Credentials, Identity, Policy, PublishKind,
    SubscribeVerdict, TlsInfo, Verdict,
};
use moat::store::MemoryStore;
use moat::{Broker, Config};
use rcgen::SanType;
use tokio::process::Command;

use crate::certs::{self, Ca, Files, Leaf};
use crate::harness::{self, RawClient, TestBroker, WAIT, raw_connect_packet, raw_publish};

/// A PKI for one test: a CA, a server certificate, and their files.
pub struct Pki {
    pub ca: Ca,
    pub server: Leaf,
    pub files: Files,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("moat test CA");
        let server = ca.server(&["broker.test"]);
        let files = Files::new();
        files.write("ca.pem", &ca.cert_pem());
        files.write("server.pem", &server.cert_pem);
        files.write("server.key", &server.key_pem);
        Pki { ca, server, files }
    }

    /// The `[listener.tls]` table for the server certificate.
    pub fn tls(&self) -> TlsConfig {
        TlsConfig::new(self.files.path("server.pem"), self.files.path("server.key"))
    }

    /// Writes a client certificate and key as `<name>.pem` / `<name>.key`.
    pub fn write_client(&self, name: &str, leaf: &Leaf) {
        self.files.write(&format!("{name}.pem"), &leaf.cert_pem);
        self.files.write(&format!("{name}.key"), &leaf.key_pem);
    }
}

/// A listener of `protocol` on an ephemeral loopback port with `tls`.
pub fn listener(protocol: Protocol, tls: Option<TlsConfig>) -> ListenerConfig {
    ListenerConfig {
        protocol,
        tls,
        ..ListenerConfig::tcp("secure", "127.0.0.1:0".parse().unwrap())
    }
}

/// A broker whose only listener is `l`, with `$SYS` off and `policy`.
pub async fn start_with_policy(l: ListenerConfig, policy: Arc<dyn Policy>) -> TestBroker {
    start_full(vec![l], policy, |_| {}).await
}

/// A broker with these listeners, `$SYS` off, the allow-all policy.
pub async fn start_with_listeners(listeners: Vec<ListenerConfig>) -> TestBroker {
    start_full(listeners, Arc::new(AllowAll), |_| {}).await
}

/// A broker with these listeners, `policy`, and `tweak` applied to the rest of the config.
pub async fn start_full(
    listeners: Vec<ListenerConfig>,
    policy: Arc<dyn Policy>,
    tweak: impl FnOnce(&mut Config),
) -> TestBroker {
    let mut config = Config {
        listeners,
        ..Config::default()
    };
    tweak(&mut config);
    config.sys.interval = Duration::ZERO;
    let broker = Broker::start_with(config, Arc::new(MemoryStore::new()), policy)
        .await
        .expect("broker starts");
    let addr = broker.local_addr();
    TestBroker { broker, addr }
}

pub async fn start(l: ListenerConfig) -> TestBroker {
    start_with_policy(l, Arc::new(AllowAll)).await
}

/// Runs a command to completion within the wait; returns (success, stdout + stderr).
pub async fn run(cmd: &mut Command) -> (bool, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT * 2, cmd.output())
        .await
        .expect("command finishes in time")
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `mosquitto_pub` over TLS to `localhost` (the name in the server certificate).
fn mosquitto_pub(broker: &TestBroker, pki: &Pki, extra: &[&str]) -> Command {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "localhost", "-p", &broker.port().to_string()])
        .args(["--cafile", &pki.files.str("ca.pem"), "-q", "1"])
        .args(extra);
    cmd
}

/// An `openssl s_client` handshake with `version_flag` (`-tls1_2`, ...); returns its output.
/// `config` points OpenSSL at a configuration file (to allow old protocol versions).
async fn s_client(port: u16, pki: &Pki, args: &[&str], config: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-servername",
            "localhost",
            "-CAfile",
            &pki.files.str("ca.pem"),
        ])
        .args(args);
    if let Some(c) = config {
        cmd.env("OPENSSL_CONF", c);
    }
    run(&mut cmd).await
}

/// Whether s_client's output shows a completed handshake: a cipher and the server's
/// certificate (a TLS 1.3 handshake refused after the ServerHello names a cipher but shows no
/// certificate).
fn handshake_done(out: &str) -> bool {
    out.contains("Cipher is ")
        && !out.contains("Cipher is (NONE)")
        && out.contains("Server certificate")
}

/// TLS 1.2 and 1.3 are served, with ALPN `mqtt`; TLS 1.1 is refused, and with
/// `min_version = "1.3"` TLS 1.2 as well. The refusal is shown to
/// be the broker's: the same OpenSSL client, configured to allow TLS 1.1, completes a TLS 1.1
/// handshake with `openssl s_server`.
#[tokio::test]
async fn tls_12_and_13_are_served_with_alpn_mqtt_and_tls_11_is_refused() {
    let pki = Pki::new();
    let b = start(listener(Protocol::Tls, Some(pki.tls()))).await;

    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (_, out) = s_client(b.port(), &pki, &[flag, "-alpn", "mqtt"], None).await;
        assert!(handshake_done(&out), "{flag}: {out}");
        assert!(
            out.contains(&format!("Protocol  : {version}"))
                || out.contains(&format!("New, {version}")),
            "{out}"
        );
        assert!(out.contains("ALPN protocol: mqtt"), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    }
    // A client that offers only another application protocol is refused (RFC 7301).
    let (_, out) = s_client(b.port(), &pki, &["-alpn", "http/1.1"], None).await;
    assert!(!handshake_done(&out), "{out}");

    // An OpenSSL configuration that lets the client offer TLS 1.1 at all.
    let cnf = pki.files.write(
        "old.cnf",
        "openssl_conf = c\n[c]\nssl_conf = s\n[s]\nsystem_default = d\n[d]\n\
         MinProtocol = TLSv1\nCipherString = DEFAULT:@SECLEVEL=0\n",
    );
    let cnf = cnf.display().to_string();
    let control = control_tls11_server(&pki, &cnf).await;
    let (_, out) = s_client(control, &pki, &["-tls1_1"], Some(&cnf)).await;
    assert!(
        handshake_done(&out),
        "control: OpenSSL must be able to speak TLS 1.1: {out}"
    );

    let refused_before = b.broker.metrics().limited(Limit::TlsHandshake);
    let (_, out) = s_client(b.port(), &pki, &["-tls1_1"], Some(&cnf)).await;
    assert!(!handshake_done(&out), "TLS 1.1 must be refused: {out}");
    assert!(b.broker.metrics().limited(Limit::TlsHandshake) > refused_before);
    b.stop().await;

    // min_version = "1.3": TLS 1.2 is refused too.
    let mut tls = pki.tls();
    tls.min_version = moat::config::TlsVersion::V1_3;
    let b = start(listener(Protocol::Tls, Some(tls))).await;
    let (_, out) = s_client(b.port(), &pki, &["-tls1_2"], None).await;
    assert!(!handshake_done(&out), "TLS 1.2 must be refused: {out}");
    let (_, out) = s_client(b.port(), &pki, &["-tls1_3"], None).await;
    assert!(handshake_done(&out), "{out}");
    b.stop().await;
}

/// Starts `openssl s_server` speaking only TLS 1.1 on an ephemeral port; returns the port.
async fn control_tls11_server(pki: &Pki, cnf: &str) -> u16 {
    use tokio::io::AsyncBufReadExt;
    let mut child = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "1",
            "-tls1_1",
        ])
        .args([
            "-cert",
            &pki.files.str("server.pem"),
            "-key",
            &pki.files.str("server.key"),
        ])
        .env("OPENSSL_CONF", cnf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_server runs");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("ACCEPT ") {
                return rest.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            }
        }
        panic!("s_server printed no ACCEPT line")
    })
    .await
    .expect("s_server starts");
    // Keep it alive, its standard input open and its output drained (it dies of SIGPIPE
    // otherwise when it prints the session), until it has served its one client.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(WAIT * 2, async {
            while let Ok(Some(_)) = lines.next_line().await {}
            let _ = child.wait().await;
        })
        .await;
    });
    port
}

/// mosquitto_sub and mosquitto_pub, verifying the broker against the test CA, exchange
/// messages over the TLS listener.
#[tokio::test]
async fn mosquitto_clients_talk_over_tls_with_cafile() {
    let pki = Pki::new();
    let b = start(listener(Protocol::Tls, Some(pki.tls()))).await;
    let before = b.broker.metrics().subscriptions;
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &b.port().to_string()])
        .args([
            "--cafile",
            &pki.files.str("ca.pem"),
            "-t",
            "secure/#",
            "-C",
            "2",
            "-W",
            "20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs");
    harness::eventually("mosquitto_sub subscribed over TLS", || {
        b.broker.metrics().subscriptions > before
    })
    .await;
    for (i, v) in ["mqttv311", "mqttv5"].into_iter().enumerate() {
        let msg = format!("hello {i}");
        let (ok, out) = run(&mut mosquitto_pub(
            &b,
            &pki,
            &["-V", v, "-t", "secure/a", "-m", &msg],
        ))
        .await;
        assert!(ok, "{out}");
    }
    let out = tokio::time::timeout(WAIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 0\nhello 1\n");

    // A client that does not trust the broker's CA stops at the handshake.
    let other = Ca::new("someone else");
    pki.files.write("other-ca.pem", &other.cert_pem());
    let (ok, _) = run(Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &b.port().to_string()])
        .args([
            "--cafile",
            &pki.files.str("other-ca.pem"),
            "-t",
            "t",
            "-m",
            "x",
        ]))
    .await;
    assert!(!ok);
    b.stop().await;
}

/// The mutual-TLS listener: a client certificate from the trusted CA gets in; no certificate,
/// one from another CA, and a revoked one (CRL) are refused in the handshake, and each
/// refusal is counted. A second client of the same CA, not revoked, still gets in.
#[tokio::test]
async fn mutual_tls_requires_a_valid_unrevoked_client_certificate() {
    let pki = Pki::new();
    let good = pki.ca.client("device-1", vec![]);
    let revoked = pki.ca.client("device-2", vec![]);
    let stranger_ca = Ca::new("stranger CA");
    let stranger = stranger_ca.client("device-1", vec![]);
    pki.write_client("good", &good);
    pki.write_client("revoked", &revoked);
    pki.write_client("stranger", &stranger);
    pki.files.write("crl.pem", &pki.ca.crl(&[revoked.serial]));
    let mut tls = pki.tls();
    tls.client_ca = Some(pki.files.path("ca.pem"));
    tls.crl = Some(pki.files.path("crl.pem"));
    let b = start(listener(Protocol::Tls, Some(tls))).await;

    let with_cert = |name: &str| {
        let mut cmd = mosquitto_pub(&b, &pki, &["-t", "m/t", "-m", "x"]);
        cmd.args(["--cert", &pki.files.str(&format!("{name}.pem"))])
            .args(["--key", &pki.files.str(&format!("{name}.key"))]);
        cmd
    };
    let (ok, out) = run(&mut with_cert("good")).await;
    assert!(ok, "trusted client refused: {out}");

    let refused = || b.broker.metrics().limited(Limit::TlsHandshake);
    let mut expected = refused();
    let (ok, _) = run(&mut mosquitto_pub(&b, &pki, &["-t", "m/t", "-m", "x"])).await;
    assert!(!ok, "a client without a certificate got in");
    expected += 1;
    harness::eventually("no-certificate refusal counted", || refused() >= expected).await;
    for name in ["stranger", "revoked"] {
        let (ok, _) = run(&mut with_cert(name)).await;
        assert!(!ok, "{name} client got in");
        expected += 1;
        harness::eventually("refusal counted", || refused() >= expected).await;
    }
    // The revoked one is refused for revocation, not because its CA is unknown: the same
    // CA's other certificate passes through the same CRL.
    let (ok, out) = run(&mut with_cert("good")).await;
    assert!(ok, "{out}");
    b.stop().await;
}

/// Records the client of every authentication; refuses user `mallory`.
#[derive(Default)]
pub struct Recorder {
    pub clients: Mutex<Vec<ClientInfo>>,
}

impl Policy for Recorder {
    fn on_connect(&self, client: &Arc<ClientInfo>) -> Pending<Verdict> {
        AllowAll.on_connect(client)
    }
    fn authenticate(&self, client: &Arc<ClientInfo>, c: Credentials) -> Pending<AuthOutcome> {
        self.clients.lock().unwrap().push((**client).clone());
        if client.username.as_deref() == Some("mallory") {
            return AuthOutcome::Deny(moat::policy::Denial {
                reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                message: None,
            })
            .into();
        }
        AllowAll.authenticate(client, c)
    }
    fn continue_auth(
        &self,
        client: &Arc<ClientInfo>,
        state: bytes::Bytes,
        data: bytes::Bytes,
    ) -> Pending<AuthOutcome> {
        AllowAll.continue_auth(client, state, data)
    }
    fn authorize_publish(
        &self,
        c: &Arc<ClientInfo>,
        i: &Arc<Identity>,
        k: PublishKind,
        m: &Arc<moat::message::Message>,
    ) -> Pending<Verdict> {
        AllowAll.authorize_publish(c, i, k, m)
    }
    fn authorize_subscribe(
        &self,
        c: &Arc<ClientInfo>,
        i: &Arc<Identity>,
        f: &bytestring::ByteString,
        q: QoS,
    ) -> Pending<SubscribeVerdict> {
        AllowAll.authorize_subscribe(c, i, f, q)
    }
    fn authorize_deliver(
        &self,
        c: &Arc<ClientInfo>,
        i: &Arc<Identity>,
        t: &bytestring::ByteString,
    ) -> Pending<Verdict> {
        AllowAll.authorize_deliver(c, i, t)
    }
}

impl Recorder {
    pub fn last(&self) -> ClientInfo {
        self.clients
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a client authenticated")
    }
}

/// What the TLS layer verified reaches the policy intact: version, cipher, the SNI the client
/// sent, the client certificate's subject (RFC 4514), its SANs and the SHA-256 of its DER.
#[tokio::test]
async fn tls_facts_reach_the_policy_intact() {
    let pki = Pki::new();
    let client = pki.ca.client(
        "sensor-42",
        vec![
            SanType::DnsName("sensor-42.devices.test".try_into().unwrap()),
            SanType::URI("spiffe://moat.test/sensor/42".try_into().unwrap()),
            SanType::Rfc822Name("ops@moat.test".try_into().unwrap()),
            SanType::IpAddress("10.9.8.7".parse().unwrap()),
        ],
    );
    let mut tls = pki.tls();
    tls.client_ca = Some(pki.files.path("ca.pem"));
    tls.client_certs = Some(ClientCerts::Optional);
    let policy = Arc::new(Recorder::default());
    let b = start_with_policy(listener(Protocol::Tls, Some(tls)), policy.clone()).await;

    for (versions, name) in [
        (&[&rustls::version::TLS13][..], "TLSv1.3"),
        (&[&rustls::version::TLS12][..], "TLSv1.2"),
    ] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.der().into()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(certs::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![client.der.clone().into()],
                rustls_pki_types::pem::PemObject::from_pem_slice(client.key_pem.as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let stream = certs::connect(b.addr, "broker.test", config).await.unwrap();
        let cipher = stream
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .unwrap()
            .suite();
        let mut raw = RawClient::over(stream, ProtocolVersion::V5);
        let ack = raw
            .connack(raw_connect_packet(ProtocolVersion::V5, "sensor-42", true))
            .await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        let seen = policy.last();
        let expected = TlsInfo {
            version: name.into(),
            cipher: cipher.as_str().unwrap().into(),
            sni: Some("broker.test".into()),
            peer_subject: Some("CN=sensor-42,O=moat tests".into()),
            peer_sans: vec![
                "sensor-42.devices.test".into(),
                "spiffe://moat.test/sensor/42".into(),
                "ops@moat.test".into(),
                "10.9.8.7".into(),
            ],
            peer_fingerprint_sha256: Some(certs::sha256_hex(&client.der)),
        };
        assert_eq!(seen.tls.as_deref(), Some(&expected));
        assert_eq!(seen.listener.as_ref(), "secure");
    }

    // Optional client certificates: a client without one gets in, and the policy sees TLS
    // facts without a peer.
    let stream = certs::connect(b.addr, "localhost", certs::client_config(&pki.ca, None))
        .await
        .unwrap();
    let mut raw = RawClient::over(stream, ProtocolVersion::V311);
    let ack = raw
        .connack(raw_connect_packet(ProtocolVersion::V311, "anonymous", true))
        .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let seen = policy.last().tls.expect("TLS facts");
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    assert_eq!((seen.peer_subject.clone(), seen.peer_sans.len()), (None, 0));
    assert_eq!(seen.peer_fingerprint_sha256, None);
    b.stop().await;
}

/// The same facts reach a real Wasm plugin through the `moat:policy` contract: the
/// `test-policy` plugin refuses the connection with them as its message, which the MQTT 5
/// client reads in the CONNACK's reason string.
#[tokio::test]
async fn tls_facts_reach_a_wasm_plugin_intact() {
    let pki = Pki::new();
    let client = pki.ca.client(
        "sensor-7",
        vec![
            SanType::DnsName("sensor-7.devices.test".try_into().unwrap()),
            SanType::IpAddress("10.1.2.3".parse().unwrap()),
        ],
    );
    let mut tls = pki.tls();
    tls.client_ca = Some(pki.files.path("ca.pem"));
    let b = harness::start_with(|c| {
        c.listeners = vec![listener(Protocol::Tls, Some(tls))];
        c.plugin_chain = vec![crate::plugins::test_policy(
            "echo",
            serde_json::json!({"echo_tls": true}),
        )];
    })
    .await;
    let config = certs::client_config(&pki.ca, Some(&client));
    let stream = certs::connect(b.addr, "broker.test", config).await.unwrap();
    let cipher = stream
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .unwrap()
        .suite();
    let mut raw = RawClient::over(stream, ProtocolVersion::V5);
    let ack = raw
        .connack(raw_connect_packet(ProtocolVersion::V5, "sensor-7", true))
        .await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let expected = format!(
        "secure|TLSv1.3|{}|broker.test|CN=sensor-7,O=moat tests|sensor-7.devices.test,10.1.2.3|{}",
        cipher.as_str().unwrap(),
        certs::sha256_hex(&client.der)
    );
    assert_eq!(
        ack.properties.reason_string.as_deref(),
        Some(expected.as_str())
    );
    b.stop().await;
}

/// `identity_as_username = "cn"`: the policy sees the certificate's common name as the user
/// name, whatever the client put in CONNECT.
#[tokio::test]
async fn identity_as_username_takes_the_user_name_from_the_certificate() {
    let pki = Pki::new();
    let client = pki.ca.client(
        "alice",
        vec![SanType::Rfc822Name("alice@moat.test".try_into().unwrap())],
    );
    let policy = Arc::new(Recorder::default());
    for (mode, expected) in [
        (IdentityAsUsername::Cn, "alice"),
        (IdentityAsUsername::SanEmail, "alice@moat.test"),
    ] {
        let mut tls = pki.tls();
        tls.client_ca = Some(pki.files.path("ca.pem"));
        tls.identity_as_username = mode;
        let b = start_with_policy(listener(Protocol::Tls, Some(tls)), policy.clone()).await;
        let config = certs::client_config(&pki.ca, Some(&client));
        let stream = certs::connect(b.addr, "localhost", config).await.unwrap();
        let mut raw = RawClient::over(stream, ProtocolVersion::V5);
        let mut connect = raw_connect_packet(ProtocolVersion::V5, "c1", true);
        connect.username = Some("mallory".into());
        let ack = raw.connack(connect).await;
        assert_eq!(
            ack.reason_code,
            ReasonCode::SUCCESS,
            "the CONNECT user name was ignored"
        );
        assert_eq!(policy.last().username.as_deref(), Some(expected));
        b.stop().await;
    }
}

/// A client that opens TCP and never starts the TLS handshake is closed after the listener's
/// handshake timeout, and counted.
#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_at_its_deadline() {
    let pki = Pki::new();
    let mut tls = pki.tls();
    tls.handshake_timeout = Duration::from_secs(1);
    let b = start(listener(Protocol::Tls, Some(tls))).await;
    let mut raw = RawClient::connect(b.addr, ProtocolVersion::V311).await;
    let started = std::time::Instant::now();
    assert!(raw.closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    harness::eventually("handshake timeout counted", || {
        b.broker.metrics().limited(Limit::TlsHandshake) == 1
    })
    .await;
    b.stop().await;
}

/// The certificate a fresh client is shown, as DER.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Ca) -> Vec<u8> {
    let stream = certs::connect(addr, "localhost", certs::client_config(ca, None))
        .await
        .expect("handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// New certificate files are picked up (by the file check and by an explicit reload, as on
/// SIGHUP) for new connections, while a connection made before keeps working; a broken
/// replacement keeps the previous certificate.
#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let pki = Pki::new();
    let mut tls = pki.tls();
    tls.reload_interval = Duration::from_secs(1);
    let b = start(listener(Protocol::Tls, Some(tls))).await;
    assert_eq!(served_certificate(b.addr, &pki.ca).await, pki.server.der);

    // A client connected and subscribed before the rotation.
    let stream = certs::connect(b.addr, "localhost", certs::client_config(&pki.ca, None))
        .await
        .unwrap();
    let mut old = RawClient::over(stream, ProtocolVersion::V311);
    let ack = old
        .connack(raw_connect_packet(ProtocolVersion::V311, "old", true))
        .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    old.subscribe_one(1, "rot/#", QoS::AtMostOnce).await;

    // Rotation by file change.
    let second = pki.ca.server(&[]);
    pki.files.write("server.key", &second.key_pem);
    pki.files.write("server.pem", &second.cert_pem);
    let deadline = std::time::Instant::now() + WAIT * 2;
    while served_certificate(b.addr, &pki.ca).await != second.der {
        assert!(
            std::time::Instant::now() < deadline,
            "file change not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken replacement (certificate without its key) keeps the working one.
    let third = pki.ca.server(&[]);
    pki.files.write("server.pem", &third.cert_pem);
    assert_eq!(b.broker.reload_certificates(), 0);
    assert_eq!(served_certificate(b.addr, &pki.ca).await, second.der);
    // Completed, an explicit reload (what SIGHUP does) takes it.
    pki.files.write("server.key", &third.key_pem);
    assert_eq!(b.broker.reload_certificates(), 1);
    assert_eq!(served_certificate(b.addr, &pki.ca).await, third.der);

    // The old connection never noticed.
    let stream = certs::connect(b.addr, "localhost", certs::client_config(&pki.ca, None))
        .await
        .unwrap();
    let mut new = RawClient::over(stream, ProtocolVersion::V311);
    new.connack(raw_connect_packet(ProtocolVersion::V311, "new", true))
        .await;
    new.send(&raw_publish("rot/x", b"after", QoS::AtMostOnce, None))
        .await;
    match old.recv().await {
        Some(moat::codec::Packet::Publish(p)) => assert_eq!(&p.payload[..], b"after"),
        other => panic!("old connection lost: {other:?}"),
    }
    b.stop().await;
}

/// SIGHUP to the real `moat` process reloads the certificates (here the file check is off, so
/// only the signal can have done it) while a connected client carries on.
#[tokio::test]
async fn sighup_reloads_certificates_in_the_running_binary() {
    let pki = Pki::new();
    let config = pki.files.write(
        "moat.toml",
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"tls\"\n[listener.tls]\n\
             cert = {:?}\nkey = {:?}\nreload_interval = 0\n\
             [storage]\nbackend = \"memory\"\n[sys]\ninterval = 0\n[log]\nfilter = \"info\"\n",
            pki.files.path("server.pem"),
            pki.files.path("server.key"),
        ),
    );
    let broker = crate::broker_process::BrokerProcess::start(&config, &[]);
    let addr = broker.addr;
    assert_eq!(served_certificate(addr, &pki.ca).await, pki.server.der);
    let stream = certs::connect(addr, "localhost", certs::client_config(&pki.ca, None))
        .await
        .unwrap();
    let mut old = RawClient::over(stream, ProtocolVersion::V5);
    let ack = old
        .connack(raw_connect_packet(ProtocolVersion::V5, "before-hup", true))
        .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);

    let second = pki.ca.server(&[]);
    pki.files.write("server.key", &second.key_pem);
    pki.files.write("server.pem", &second.cert_pem);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served_certificate(addr, &pki.ca).await,
        pki.server.der,
        "no reload without SIGHUP"
    );
    broker.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + WAIT;
    while served_certificate(addr, &pki.ca).await != second.der {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    old.send(&moat::codec::Packet::PingReq).await;
    assert_eq!(old.recv().await, Some(moat::codec::Packet::PingResp));
}
