//! The MQTT control packets as plain data, for both protocol versions.
//!
//! One struct per packet, named as the specification names it. A packet decoded from MQTT 3.1.1
//! uses the same types as one from 5.0: fields that 3.1.1 lacks (properties, most reason codes)
//! are simply empty, and the encoder leaves them out when it writes 3.1.1. This keeps the session
//! layer free of per-version branches except where the protocols really behave differently.
//!
//! Strings are [`ByteString`] and binary data is [`Bytes`]: both are views into the buffer the
//! packet was read from, so decoding a PUBLISH copies neither its topic nor its payload.

use bytes::Bytes;
use bytestring::ByteString;

/// The protocol level byte of CONNECT (MQTT-3.1.2-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte as it appears on the wire.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for its wire value, or `None` for 3 (which is malformed everywhere).
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// An MQTT 5 reason code (section 2.4). A newtype rather than an enum because the same byte
/// has several names (0x00 is Success, Normal disconnection and Granted QoS 0) and a peer may
/// send a code this broker does not know; the decoder checks codes per packet type.
///
/// For MQTT 3.1.1 the CONNACK return codes are mapped onto their v5 equivalents when decoded and
/// back when encoded (see `connack_v311_return_code`), so the session speaks one vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    pub const SUCCESS: ReasonCode = ReasonCode(0x00);
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
    pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
    pub const DISCONNECT_WITH_WILL: ReasonCode = ReasonCode(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
    pub const CONTINUE_AUTHENTICATION: ReasonCode = ReasonCode(0x18);
    pub const REAUTHENTICATE: ReasonCode = ReasonCode(0x19);
    pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
    pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
    pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = ReasonCode(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = ReasonCode(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
    pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
    pub const BANNED: ReasonCode = ReasonCode(0x8A);
    pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = ReasonCode(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
    pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
    pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
    pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: ReasonCode = ReasonCode(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: ReasonCode = ReasonCode(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
    pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
    pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: ReasonCode = ReasonCode(0x96);
    pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
    pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
    pub const RETAIN_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9A);
    pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
    pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);
    pub const SERVER_MOVED: ReasonCode = ReasonCode(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: ReasonCode = ReasonCode(0x9F);
    pub const MAXIMUM_CONNECT_TIME: ReasonCode = ReasonCode(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA2);

    /// True for codes 0x80 and above, which report a failure (section 2.4).
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }
}

/// The MQTT 5 properties of a packet (section 2.2.2): a pointer to their [`PropertyValues`],
/// allocated only when the packet has any.
///
/// Most packets have none (every MQTT 3.1.1 packet, most 5.0 ones), and the values take 400
/// bytes: inline, they made every packet that large, and handing a decoded PUBLISH from the
/// decoder through the session cost a copy of them at each step (a fifth of the broker's time
/// in a fan-in profile). As a pointer a packet is about 80 bytes.
///
/// Fields read as before through `Deref` (all absent when there are none); writing one through
/// `DerefMut` allocates the values on first use, so a path that may have nothing to write
/// should check first, or use [`Properties::values_mut`]. `Default` is "no properties" and
/// allocates nothing. Build a set with [`PropertyValues`] and `Properties::from`.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

/// No properties, for [`Properties`] to point at when it has none.
static NO_PROPERTIES: PropertyValues = PropertyValues::NONE;

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(|v| *v == PropertyValues::NONE)
    }

    /// Properties with these values, in an allocation the caller already has (to reuse one;
    /// see [`Properties::into_box`]).
    pub fn from_box(values: Box<PropertyValues>) -> Properties {
        Properties(Some(values))
    }

    /// The allocation of the values, if any, for reuse.
    pub fn into_box(self) -> Option<Box<PropertyValues>> {
        self.0
    }

    /// The values, if the packet has any.
    pub fn values(&self) -> Option<&PropertyValues> {
        self.0.as_deref()
    }

    /// The values, if the packet has any, for changing them without allocating when it has
    /// none.
    pub fn values_mut(&mut self) -> Option<&mut PropertyValues> {
        self.0.as_deref_mut()
    }
}

impl std::ops::Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_default()
    }
}

impl From<PropertyValues> for Properties {
    /// No allocation for an empty set.
    fn from(values: PropertyValues) -> Properties {
        if values == PropertyValues::NONE {
            Properties(None)
        } else {
            Properties(Some(Box::new(values)))
        }
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Properties) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// The values of the MQTT 5 properties (section 2.2.2), all optional; see [`Properties`].
///
/// One struct serves every packet type: the decoder rejects a property that is not allowed in
/// the packet it arrived in (a Malformed Packet), and rejects a second copy of a property that
/// may appear only once (MQTT-2.2.2-1 family). For MQTT 3.1.1 packets it is always empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyValues {
    /// 0x01, PUBLISH and will: 0 = unspecified bytes, 1 = UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02, PUBLISH and will, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH and will.
    pub content_type: Option<ByteString>,
    /// 0x08, PUBLISH and will.
    pub response_topic: Option<ByteString>,
    /// 0x09, PUBLISH and will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B, PUBLISH (server to client, may repeat) and SUBSCRIBE (once); 1..=268_435_455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT, CONNACK, DISCONNECT, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<ByteString>,
    /// 0x13, CONNACK, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT, CONNACK, AUTH.
    pub authentication_method: Option<ByteString>,
    /// 0x16, CONNECT, CONNACK, AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT: 0 or 1.
    pub request_problem_information: Option<u8>,
    /// 0x18, will, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT: 0 or 1.
    pub request_response_information: Option<u8>,
    /// 0x1A, CONNACK.
    pub response_information: Option<ByteString>,
    /// 0x1C, CONNACK and DISCONNECT.
    pub server_reference: Option<ByteString>,
    /// 0x1F, every acknowledgement, DISCONNECT and AUTH.
    pub reason_string: Option<ByteString>,
    /// 0x21, CONNECT and CONNACK; never 0.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT and CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH; never 0.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK: 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25, CONNACK: 0 or 1.
    pub retain_available: Option<u8>,
    /// 0x26, almost every packet; may repeat, order kept (MQTT-3.3.2-18).
    pub user_properties: Vec<(ByteString, ByteString)>,
    /// 0x27, CONNECT and CONNACK; never 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK: 0 or 1.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29, CONNACK: 0 or 1.
    pub subscription_identifiers_available: Option<u8>,
    /// 0x2A, CONNACK: 0 or 1.
    pub shared_subscription_available: Option<u8>,
}

impl PropertyValues {
    /// No property set (what `Default` gives, usable in constants).
    pub const NONE: PropertyValues = PropertyValues {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: Vec::new(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
    };
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// CONNECT (section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// "Clean Session" in 3.1.1, "Clean Start" in 5.0.
    pub clean_start: bool,
    /// Seconds; 0 turns keep alive off.
    pub keep_alive: u16,
    /// May be empty: the server then assigns one (MQTT-3.1.3-6) or, for 3.1.1 with
    /// clean session 0, refuses it (MQTT-3.1.3-8).
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

/// The will message carried by CONNECT (section 3.1.3.2 to 3.1.3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (5.0 only): will delay, payload format, message expiry, content type,
    /// response topic, correlation data, user properties.
    pub properties: Properties,
}

/// CONNACK (section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// A v5 reason code; for 3.1.1 it is mapped to the nearest return code 0..=5 on encode.
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

/// PUBLISH (section 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in 5.0 when a topic alias is given (MQTT-3.3.2-8 family).
    pub topic: ByteString,
    /// Present exactly when qos > 0 (MQTT-2.2.1-2); never 0 (MQTT-2.2.1-3).
    pub packet_id: Option<u16>,
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape (sections 3.4 to 3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    pub packet_id: u16,
    /// Success when absent on the wire (MQTT 5 allows omitting it together with properties).
    pub reason_code: ReasonCode,
    /// Only reason string and user properties are allowed here.
    pub properties: Properties,
}

impl PubResponse {
    /// A success response with no properties.
    pub fn success(packet_id: u16) -> PubResponse {
        PubResponse {
            packet_id,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }
}

/// How retained messages are sent when a subscription is made (section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    OnSubscribe = 0,
    /// 1: send them only if the subscription did not already exist.
    OnNewSubscription = 1,
    /// 2: do not send them.
    Never = 2,
}

/// The subscription options byte of SUBSCRIBE (section 3.8.3.1). In 3.1.1 only `qos` is on the
/// wire; the other fields keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE (section 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// At least one (MQTT-3.8.3-3). Filters are checked as UTF-8 here; their topic syntax is
    /// checked by the session so it can answer per filter with 0x8F in the SUBACK.
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
    /// Subscription identifier and user properties.
    pub properties: Properties,
}

/// SUBACK (section 3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter, in order. For 3.1.1 only 0x00, 0x01, 0x02 and 0x80 are valid; the
    /// encoder maps every other failure code to 0x80.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: Properties,
}

/// UNSUBSCRIBE (section 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<ByteString>,
    pub properties: Properties,
}

/// UNSUBACK (section 3.11). In 3.1.1 it carries only the packet identifier and the encoder
/// ignores `reason_codes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub reason_codes: Vec<ReasonCode>,
    pub properties: Properties,
}

/// DISCONNECT (section 3.14). In 3.1.1 it has no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    /// Session expiry interval, reason string, server reference, user properties.
    pub properties: Properties,
}

impl Disconnect {
    pub fn new(reason_code: ReasonCode) -> Disconnect {
        Disconnect {
            reason_code,
            properties: Properties::default(),
        }
    }
}

/// AUTH (section 3.15), MQTT 5 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason_code: ReasonCode,
    /// Authentication method and data, reason string, user properties.
    pub properties: Properties,
}
