//! From socket to a served session: read CONNECT, validate it, authenticate (with MQTT 5
//! enhanced authentication's AUTH exchange when the client asks for it), check the will, take
//! over or resume the session, answer CONNACK.
//!
//! Everything here happens before the client is trusted, so it is bounded: the CONNECT and each
//! AUTH must arrive within the listener's connect timeout and fit `limits.max_packet_size`, an
//! AUTH exchange has at most [`MAX_AUTH_ROUNDS`] steps, a refused authentication is answered
//! only after a delay that grows with failures from the same address, and a refused client
//! gets the matching reason code (or 3.1.1 return code) before the socket closes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::connection::Conn;
use super::{Kick, Session, SessionRef, SessionState};
use crate::broker::Shared;
use crate::codec::{
    self, Auth, ConnAck, Connect, DecodeError, Packet, Properties, PropertyValues, ProtocolVersion,
    QoS, ReasonCode, Will,
};
use crate::message::Message;
use crate::metrics::Limit;
use crate::net::Peer;
use crate::policy::{AuthOutcome, ClientInfo, Credentials, Denial, Identity, PublishKind, Verdict};
use crate::topic;

/// The most AUTH round trips one authentication may take (SCRAM needs two).
pub(super) const MAX_AUTH_ROUNDS: usize = 8;

/// Why the handshake did not produce a session.
pub(super) enum Refused {
    /// Answer with a CONNACK carrying this code (in the client's protocol), then close.
    ConnAck(ProtocolVersion, Denial),
    /// Close without a word: timeout, I/O error, or a peer that is not speaking MQTT.
    Silent,
}

/// The packet type of CONNECT, the high nibble of its first byte (a CONNECT with bad flags is
/// still decoded, to answer it with the right reason code).
const CONNECT_TYPE: u8 = 1;

/// Reads the first packet, which must be CONNECT (MQTT-3.1.0-1).
pub(super) async fn read_connect<IO: AsyncRead + Unpin>(
    shared: &Shared,
    reader: &mut IO,
    rbuf: &mut BytesMut,
    deadline: Duration,
) -> Result<Box<Connect>, Refused> {
    let frame = read_frame(shared, reader, rbuf, deadline, Some(CONNECT_TYPE)).await?;
    match codec::decode(frame.clone(), None) {
        Ok(Packet::Connect(c)) => Ok(c),
        Ok(_) => Err(Refused::Silent),
        Err(e) => Err(refuse_decode(codec::connect_version(&frame), &e)),
    }
}

/// Reads one whole packet's bytes within `deadline`; with `only`, a packet of another type is
/// closed at its first byte.
async fn read_frame<IO: AsyncRead + Unpin>(
    shared: &Shared,
    reader: &mut IO,
    rbuf: &mut BytesMut,
    deadline: Duration,
    only: Option<u8>,
) -> Result<Bytes, Refused> {
    let max = shared.config.limits.max_packet_size;
    let read = async {
        loop {
            // MQTT-3.1.0-1: the first packet is CONNECT. Anything else (an HTTP request, a
            // PROXY header from an address not trusted to send one, TLS to a plain port) is
            // closed at its first byte rather than waited on until the connect timeout.
            if let Some(kind) = only
                && rbuf.first().is_some_and(|&b| b >> 4 != kind)
            {
                return Err(Refused::Silent);
            }
            match codec::check(rbuf, max) {
                Ok(Some(n)) => {
                    shared.metrics.packet_received(n);
                    return Ok(rbuf.split_to(n).freeze());
                }
                Ok(None) => {}
                Err(e) => {
                    if matches!(e, DecodeError::TooLarge { .. }) {
                        shared.metrics.limit_hit(Limit::PacketTooLarge);
                    }
                    return Err(refuse_decode(codec::connect_version(rbuf), &e));
                }
            }
            if rbuf.capacity() - rbuf.len() < 256 {
                rbuf.reserve(4096); // a CONNECT with a large will; `check` bounds the total
            }
            match reader.read_buf(rbuf).await {
                Ok(0) | Err(_) => return Err(Refused::Silent),
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => {
            shared.metrics.limit_hit(Limit::ConnectTimeout);
            Err(Refused::Silent)
        }
    }
}

fn refuse_decode(version: Option<ProtocolVersion>, e: &DecodeError) -> Refused {
    let denial = Denial {
        reason: e.reason_code(),
        message: Some(e.to_string()),
    };
    match (version, e) {
        // MQTT-3.1.2-2: an unsupported level gets return code 0x01 / reason 0x84.
        (_, DecodeError::UnsupportedProtocol(_)) => {
            Refused::ConnAck(version.unwrap_or(ProtocolVersion::V311), denial)
        }
        // MQTT-4.13.1-1 (v5): CONNACK with the reason code before closing.
        (Some(ProtocolVersion::V5), _) => Refused::ConnAck(ProtocolVersion::V5, denial),
        // 3.1.1 has no code for a malformed CONNECT: close (MQTT-4.8.0-1 of 3.1.1).
        _ => Refused::Silent,
    }
}

/// Sends a refusing CONNACK and flushes it.
pub(super) async fn send_refusal<IO: AsyncWrite + Unpin>(
    shared: &Shared,
    writer: &mut IO,
    version: ProtocolVersion,
    denial: Denial,
    client_max_packet: Option<u32>,
) {
    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 {
        properties.reason_string = denial.message.map(ByteString::from);
    }
    let mut connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: denial.reason,
        properties,
    });
    // MQTT-3.2.2-19: no reason string beyond the client's Maximum Packet Size.
    if let Some(max) = client_max_packet
        && codec::encoded_len(&connack, version) as u64 > u64::from(max)
        && let Some(stripped) = super::connection::without_diagnostics(&connack)
    {
        connack = stripped;
    }
    shared.metrics.connect_refused();
    let _ = write_packet(shared, writer, &connack, version).await;
}

/// Encodes one packet and writes it out, within a second.
async fn write_packet<IO: AsyncWrite + Unpin>(
    shared: &Shared,
    writer: &mut IO,
    packet: &Packet,
    version: ProtocolVersion,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    codec::encode(packet, version, &mut out);
    shared.metrics.packet_sent(out.len());
    match tokio::time::timeout(Duration::from_secs(1), async {
        writer.write_all(&out).await?;
        writer.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// A client identifier for a client that sent an empty one (MQTT-3.1.3-6): 128 random bits,
/// so that nobody can guess another client's identifier and take its session over.
fn assign_client_id() -> ByteString {
    use std::fmt::Write;
    let mut bytes = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut bytes) {
        // The operating system's generator does not fail on any platform moat runs on; if it
        // ever did, handing out guessable identifiers would be worse than this panic, which
        // ends only this connection's task.
        panic!("no randomness for a client identifier: {e}");
    }
    let mut id = String::with_capacity(5 + 32);
    id.push_str("moat-");
    for b in bytes {
        let _ = write!(id, "{b:02x}");
    }
    ByteString::from(id)
}

/// Gives a string its own storage instead of a view into a read buffer.
fn detach(s: &mut ByteString) {
    *s = ByteString::from(&**s);
}

/// [`detach`] for everything a will keeps until it is published.
fn detach_will(w: &mut Will) {
    detach(&mut w.topic);
    w.payload = Bytes::copy_from_slice(&w.payload);
    let Some(p) = w.properties.values_mut() else {
        return;
    };
    for s in [&mut p.content_type, &mut p.response_topic]
        .into_iter()
        .flatten()
    {
        detach(s);
    }
    if let Some(d) = &mut p.correlation_data {
        *d = Bytes::copy_from_slice(d);
    }
    for (k, v) in &mut p.user_properties {
        detach(k);
        detach(v);
    }
}

thread_local! {
    /// The identity last established on this worker thread.
    static LAST_IDENTITY: std::cell::RefCell<Option<Arc<Identity>>> =
        const { std::cell::RefCell::new(None) };
}

/// The identity in an `Arc`, shared with the previous client's when the two are equal.
///
/// A policy that admits many clients on the same terms (every anonymous client of the default
/// chain: principal "anonymous", one role, the same plugin state) would otherwise give each
/// connection five allocations of its own for the same facts, about 300 bytes of every idle
/// connection. Comparing with the last one costs a few string compares per connect.
fn shared_identity(identity: Identity) -> Arc<Identity> {
    LAST_IDENTITY.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some(same) if **same == identity => same.clone(),
            _ => {
                let identity = Arc::new(identity);
                *last = Some(identity.clone());
                identity
            }
        }
    })
}

fn deny(reason: ReasonCode, message: &str) -> Denial {
    Denial {
        reason,
        message: Some(message.to_owned()),
    }
}

/// The socket during the handshake, for the AUTH exchange.
pub(super) struct Exchange<'a, IO> {
    io: &'a mut IO,
    rbuf: &'a mut BytesMut,
    deadline: Duration,
}

/// Validates CONNECT, authenticates, and attaches the session: the whole way from a decoded
/// CONNECT to a connection ready to serve (its CONNACK is in the write buffer).
pub(super) async fn accept<IO: AsyncRead + AsyncWrite + Unpin + Send>(
    shared: Arc<Shared>,
    connect: Box<Connect>,
    mut io: IO,
    mut rbuf: BytesMut,
    peer: Peer,
) -> Option<Conn<IO>> {
    let version = connect.protocol;
    let client_max_packet = connect.properties.maximum_packet_size;
    let remote = peer.remote;
    let mut exchange = Exchange {
        io: &mut io,
        rbuf: &mut rbuf,
        deadline: peer.connect_timeout,
    };
    match admit(&shared, connect, peer, &mut exchange).await {
        Ok(admitted) => Some(Conn::start(shared, admitted, io, rbuf).await),
        Err(Refused::ConnAck(_, denial)) => {
            tracing::debug!(%remote, reason = denial.reason.0, msg = ?denial.message, "connect refused");
            send_refusal(&shared, &mut io, version, denial, client_max_packet).await;
            None
        }
        Err(Refused::Silent) => None,
    }
}

/// What the handshake established, for [`Conn::start`].
pub(super) struct Admitted {
    pub connect: Box<Connect>,
    pub client: Arc<ClientInfo>,
    pub identity: Arc<Identity>,
    /// Authentication Data for the CONNACK (the last step of enhanced authentication).
    pub auth_data: Option<Bytes>,
    pub assigned_id: bool,
    pub session: Arc<Session>,
    pub state: tokio::sync::OwnedMutexGuard<SessionState>,
    pub session_present: bool,
    pub generation: u64,
    pub kick: Arc<Kick>,
    /// The count of plugin changes before the policy was first asked
    /// (`crate::admin::PolicyChanges`).
    pub policy_seen: u64,
}

async fn admit<IO: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    mut connect: Box<Connect>,
    peer: Peer,
    exchange: &mut Exchange<'_, IO>,
) -> Result<Admitted, Refused> {
    let limits = &shared.config.limits;
    let version = connect.protocol;
    let refuse = |d: Denial| Refused::ConnAck(version, d);

    // A connection over a limit was let in only to be told so (see `net::admission`).
    if let Some(reason) = peer.refusal {
        return Err(refuse(deny(reason, "connection limit reached")));
    }

    // Client identifier (section 3.1.3.1).
    let mut assigned_id = false;
    if connect.client_id.is_empty() {
        if version == ProtocolVersion::V311 && !connect.clean_start {
            // MQTT-3.1.3-8: an empty id needs clean session 1 in 3.1.1.
            return Err(refuse(deny(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "an empty client identifier needs clean session",
            )));
        }
        connect.client_id = assign_client_id();
        assigned_id = true;
    } else if connect.client_id.len() > limits.max_client_id_length as usize {
        return Err(refuse(deny(
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client identifier too long",
        )));
    }
    // The decoded strings are views into the read block; the ones a session keeps get storage
    // of their own, so the block is freed once the connection is idle.
    detach(&mut connect.client_id);
    if let Some(u) = &mut connect.username {
        detach(u);
    }
    if let Some(w) = &mut connect.will {
        detach_will(w);
    }

    // The will is a publish like any other: same topic rules, same broker limits.
    if let Some(will) = &connect.will {
        if topic::validate_topic_name(&will.topic).is_err()
            || !shared.topic_within_limits(&will.topic)
        {
            return Err(refuse(deny(
                ReasonCode::TOPIC_NAME_INVALID,
                "invalid will topic",
            )));
        }
        if will.topic.starts_with('$') {
            return Err(refuse(deny(
                ReasonCode::NOT_AUTHORIZED,
                "clients may not publish to $ topics",
            )));
        }
        if will.qos > limits.maximum_qos {
            // MQTT-3.2.2-12
            return Err(refuse(deny(
                ReasonCode::QOS_NOT_SUPPORTED,
                "will QoS above the maximum",
            )));
        }
        if will.retain && !limits.retain_available {
            // MQTT-3.2.2-13
            return Err(refuse(deny(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retain is not available",
            )));
        }
    }

    let client = Arc::new(ClientInfo {
        client_id: connect.client_id.clone(),
        // With `identity_as_username` the certificate names the user, whatever CONNECT says.
        username: match peer.cert_username {
            Some(from_certificate) => from_certificate,
            None => connect.username.clone(),
        },
        remote_addr: peer.remote,
        listener: peer.listener,
        protocol: version,
        tls: peer.tls,
    });
    // Broker rule: a client id the operator banned (`crate::admin`) never reaches a plugin.
    if shared.bans.read().contains(&client.client_id) {
        return Err(refuse(deny(ReasonCode::BANNED, "banned by the operator")));
    }
    let policy_seen = shared.policy_changes.now();
    if let Verdict::Deny(d) = shared.policy.on_connect(&client).get().await {
        return Err(refuse(d));
    }
    let (identity, auth_data) = match authenticate(shared, &client, &connect, exchange).await {
        Ok(r) => r,
        Err(Refused::ConnAck(v, denial)) => {
            auth_failure_delay(shared, &client, &denial).await;
            return Err(Refused::ConnAck(v, denial));
        }
        Err(Refused::Silent) => return Err(Refused::Silent),
    };
    let identity = shared_identity(identity);

    // The will is checked now, under the identity just established, and again when it is
    // published, under the policy then in force (`Shared::send_will`).
    if let Some(will) = &connect.will {
        let message = Arc::new(Message::from_will(
            will,
            client.client_id.clone(),
            limits.max_message_expiry,
        ));
        let verdict = shared
            .policy
            .authorize_publish(&client, &identity, PublishKind::Will, &message)
            .get()
            .await;
        if let Verdict::Deny(d) = verdict {
            return Err(refuse(d));
        }
    }

    // Session expiry (section 3.1.2.11.2); 3.1.1 maps clean session onto it.
    let expiry = match version {
        ProtocolVersion::V5 => connect
            .properties
            .session_expiry_interval
            .unwrap_or(0)
            .min(limits.max_session_expiry),
        ProtocolVersion::V311 if connect.clean_start => 0,
        // max_session_expiry defaults to NEVER_EXPIRES: "never" unless capped.
        ProtocolVersion::V311 => limits.max_session_expiry,
    };

    // `limits.max_persistent_sessions`: one more session kept while offline must fit.
    if expiry > 0
        && !shared
            .quotas
            .persistent_session_allowed(&connect.client_id, limits.max_persistent_sessions)
    {
        shared.metrics.limit_hit(Limit::PersistentSessions);
        return Err(refuse(deny(
            ReasonCode::QUOTA_EXCEEDED,
            "too many persistent sessions",
        )));
    }

    let kick = Arc::new(Kick::new());
    let (session, mut state, session_present, generation) = shared
        .take_session(
            &connect.client_id,
            &identity.principal,
            connect.clean_start,
            version,
            kick.clone(),
        )
        .await
        .map_err(refuse)?;
    state.protocol = version;
    state.expiry_interval = expiry;
    shared.quotas.set_persistent(&connect.client_id, expiry > 0);
    Ok(Admitted {
        connect,
        client,
        identity,
        auth_data,
        assigned_id,
        session,
        state,
        session_present,
        generation,
        kick,
        policy_seen,
    })
}

/// Slows down password guessing: a refused authentication is answered only after a delay
/// that doubles with each failure from the same address (`net::admission`). Only refusals of
/// credentials count; a refused method or a policy outage is not a guess.
async fn auth_failure_delay(shared: &Shared, client: &ClientInfo, denial: &Denial) {
    let guessing = matches!(
        denial.reason,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD | ReasonCode::NOT_AUTHORIZED | ReasonCode::BANNED
    );
    if !guessing {
        return;
    }
    let delay = shared.admission.auth_failed(client.remote_addr.ip());
    if delay.is_zero() {
        return;
    }
    shared.metrics.limit_hit(Limit::AuthFailureDelay);
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shared.shutdown.cancelled() => {}
    }
}

/// Asks the policy who the client is, running the AUTH exchange of MQTT 5 enhanced
/// authentication (section 4.12) while the policy answers with challenges.
async fn authenticate<IO: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &Arc<ClientInfo>,
    connect: &Connect,
    exchange: &mut Exchange<'_, IO>,
) -> Result<(Identity, Option<Bytes>), Refused> {
    let version = connect.protocol;
    let refuse = |d: Denial| Refused::ConnAck(version, d);
    let method = connect.properties.authentication_method.clone();
    let credentials = Credentials {
        password: connect.password.clone(),
        auth_method: method.clone(),
        auth_data: connect.properties.authentication_data.clone(),
        user_properties: connect.properties.user_properties.clone(),
    };
    let mut outcome = shared.policy.authenticate(client, credentials).get().await;
    for _ in 0..MAX_AUTH_ROUNDS {
        let (data, state) = match outcome {
            AuthOutcome::Allow { identity, data } => return Ok((identity, data)),
            AuthOutcome::Deny(d) => return Err(refuse(d)),
            AuthOutcome::Challenge { data, state } => (data, state),
        };
        // AUTH only for a client that named an Authentication Method (section 4.12).
        let Some(method) = &method else {
            return Err(refuse(deny(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "the policy challenged a client without an authentication method",
            )));
        };
        let auth = Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties::from(PropertyValues {
                authentication_method: Some(method.clone()),
                authentication_data: Some(data),
                ..PropertyValues::default()
            }),
        });
        if write_packet(shared, exchange.io, &auth, version)
            .await
            .is_err()
        {
            return Err(Refused::Silent);
        }
        let answer = client_auth(shared, exchange, method).await?;
        outcome = shared
            .policy
            .continue_auth(client, state, answer)
            .get()
            .await;
    }
    Err(refuse(deny(
        ReasonCode::NOT_AUTHORIZED,
        "too many authentication steps",
    )))
}

/// The client's answer to a challenge: an AUTH 0x18 with the same Authentication Method
/// (MQTT-4.12.0-5); its Authentication Data.
async fn client_auth<IO: AsyncRead + Unpin>(
    shared: &Shared,
    exchange: &mut Exchange<'_, IO>,
    method: &ByteString,
) -> Result<Bytes, Refused> {
    let protocol_error =
        |why: &str| Refused::ConnAck(ProtocolVersion::V5, deny(ReasonCode::PROTOCOL_ERROR, why));
    let frame = read_frame(shared, exchange.io, exchange.rbuf, exchange.deadline, None).await?;
    match codec::decode(frame, Some(ProtocolVersion::V5)) {
        Ok(Packet::Auth(a)) => {
            if a.reason_code != ReasonCode::CONTINUE_AUTHENTICATION {
                return Err(protocol_error("expected AUTH with reason 0x18"));
            }
            if a.properties.authentication_method.as_ref() != Some(method) {
                return Err(protocol_error("AUTH with another authentication method"));
            }
            Ok(a.properties.authentication_data.clone().unwrap_or_default())
        }
        // The client gave up.
        Ok(Packet::Disconnect(_)) => Err(Refused::Silent),
        Ok(_) => Err(protocol_error(
            "only AUTH or DISCONNECT may follow a challenge",
        )),
        Err(e) => Err(refuse_decode(Some(ProtocolVersion::V5), &e)),
    }
}

/// The CONNACK for an accepted client (section 3.2.2.3 for the v5 properties).
pub(super) fn connack(
    shared: &Shared,
    admitted: &Admitted,
    server_keep_alive: Option<u16>,
) -> Packet {
    let limits = &shared.config.limits;
    let connect = &admitted.connect;
    let mut p = Properties::default();
    if connect.protocol == ProtocolVersion::V5 {
        if admitted.assigned_id {
            p.assigned_client_identifier = Some(connect.client_id.clone());
        }
        let asked = connect.properties.session_expiry_interval.unwrap_or(0);
        if asked != admitted.state.expiry_interval {
            p.session_expiry_interval = Some(admitted.state.expiry_interval);
        }
        p.receive_maximum = Some(limits.receive_maximum);
        p.maximum_packet_size = Some(limits.max_packet_size);
        p.topic_alias_maximum = Some(limits.topic_alias_maximum);
        if limits.maximum_qos < QoS::ExactlyOnce {
            p.maximum_qos = Some(limits.maximum_qos as u8);
        }
        if !limits.retain_available {
            p.retain_available = Some(0);
        }
        p.server_keep_alive = server_keep_alive;
        if let Some(method) = &connect.properties.authentication_method {
            // The end of enhanced authentication (section 4.12): same method, final data.
            p.authentication_method = Some(method.clone());
            p.authentication_data = admitted.auth_data.clone();
        }
        if connect.properties.request_response_information == Some(1) {
            // A prefix the client may build response topics under (section 4.10.2).
            p.response_information = Some(ByteString::from(format!(
                "moat/response/{}",
                connect.client_id
            )));
        }
    }
    Packet::ConnAck(ConnAck {
        session_present: admitted.session_present,
        reason_code: ReasonCode::SUCCESS,
        properties: p,
    })
}

impl SessionRef {
    pub fn new(session: &Arc<Session>) -> SessionRef {
        SessionRef(session.clone())
    }
}
