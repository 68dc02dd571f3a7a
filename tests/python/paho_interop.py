#!/usr/bin/env python3
"""Interoperability checks of a running moat broker with the Eclipse Paho Python client (2.x).

Run by the Rust end-to-end tests (tests/tests/e2e/interop.rs) against a broker they start:

    paho_interop.py --port PORT --check NAME

Each check connects its own clients (MQTT 3.1.1 and/or 5.0) to 127.0.0.1:PORT. The script
exits 0 when the check passes, and otherwise prints "FAIL: <what went wrong>" and exits 1.
Checks:

  qos         publish and receive at QoS 0, 1 and 2, over 3.1.1 and over 5.0
  will        the will message is published when the connection is lost, not after a normal
              DISCONNECT (3.1.1 and 5.0)
  retained    retained messages reach later subscribers with the retain flag, and an empty
              retained message deletes them
  properties  MQTT 5 properties round trip: content type, user properties (order kept),
              correlation data, response topic, payload format, message expiry, subscription
              identifier
"""

import argparse
import queue
import socket
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 5.0  # seconds to wait for anything that should happen at once
QUIET = 0.3  # seconds to wait for something that must not happen
HOST = "127.0.0.1"


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    """A paho client with its network loop in a background thread, and queues of what it got."""

    def __init__(self, port, protocol, client_id=None):
        self.port = port
        self.protocol = protocol
        self.client_id = client_id or unique("paho")
        kwargs = {"clean_session": True} if protocol == mqtt.MQTTv311 else {}
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            reconnect_on_failure=False,
            **kwargs,
        )
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.connack = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put((mid, rcs))

    def name(self):
        return f"{self.client_id} ({'5.0' if self.protocol == mqtt.MQTTv5 else '3.1.1'})"

    def connect(self, loop=True):
        if self.protocol == mqtt.MQTTv5:
            self.c.connect(HOST, self.port, keepalive=30, clean_start=True)
        else:
            self.c.connect(HOST, self.port, keepalive=30)
        if loop:
            self.c.loop_start()
        else:
            # Drive the loop by hand until CONNACK, so that the socket can be dropped later
            # without a background thread noticing.
            deadline = time.monotonic() + TIMEOUT
            while self.connack.empty() and time.monotonic() < deadline:
                self.c.loop(timeout=0.05)
        try:
            rc = self.connack.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.name()}: no CONNACK")
        check(not rc.is_failure, f"{self.name()}: CONNACK refused: {rc}")
        return self

    def subscribe(self, topic, qos, properties=None):
        result, mid = self.c.subscribe(topic, qos, properties=properties)
        check(result == mqtt.MQTT_ERR_SUCCESS, f"{self.name()}: subscribe failed: {result}")
        try:
            got_mid, rcs = self.subacks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.name()}: no SUBACK for {topic}")
        check(got_mid == mid, f"{self.name()}: SUBACK for mid {got_mid}, wanted {mid}")
        codes = [rc.value for rc in rcs]
        check(codes == [qos], f"{self.name()}: SUBACK {codes} for {topic} at QoS {qos}")

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=TIMEOUT)
        check(info.is_published(), f"{self.name()}: publish to {topic} not completed")

    def expect(self, n):
        got = []
        for _ in range(n):
            try:
                got.append(self.messages.get(timeout=TIMEOUT))
            except queue.Empty:
                shown = [(m.topic, m.payload) for m in got]
                raise Failure(f"{self.name()}: expected {n} messages, got {len(got)}: {shown}")
        return got

    def expect_nothing(self):
        try:
            m = self.messages.get(timeout=QUIET)
        except queue.Empty:
            return
        raise Failure(f"{self.name()}: unexpected message {m.topic} {m.payload!r}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


VERSIONS = [("3.1.1", mqtt.MQTTv311), ("5.0", mqtt.MQTTv5)]


def check_qos(port):
    for label, protocol in VERSIONS:
        topic = unique("paho/qos")
        sub = Client(port, protocol).connect()
        sub.subscribe(topic + "/#", 2)
        pub = Client(port, protocol).connect()
        sent = [(f"{topic}/q{q}", f"payload {q} {label}".encode(), q) for q in (0, 1, 2)]
        for t, payload, q in sent:
            pub.publish(t, payload, q)
        got = [(m.topic, m.payload, m.qos) for m in sub.expect(3)]
        check(got == sent, f"{label}: received {got}, wanted {sent}")
        sub.expect_nothing()
        pub.close()
        sub.close()


def check_will(port):
    for label, protocol in VERSIONS:
        topic = unique("paho/will")
        watcher = Client(port, protocol).connect()
        watcher.subscribe(topic + "/#", 1)

        # A client that disconnects normally: its will is discarded.
        polite = Client(port, protocol)
        polite.c.will_set(topic + "/polite", b"should not be sent", qos=1)
        polite.connect()
        polite.close()

        # A client whose connection is lost: its will is published.
        lost = Client(port, protocol)
        lost.c.will_set(topic + "/lost", b"connection lost", qos=1, retain=False)
        lost.connect(loop=False)
        sock = lost.c.socket()
        check(sock is not None, f"{label}: no socket")
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

        (m,) = watcher.expect(1)
        check(
            (m.topic, m.payload, m.qos, m.retain) == (topic + "/lost", b"connection lost", 1, False),
            f"{label}: will message {m.topic} {m.payload!r} qos {m.qos} retain {m.retain}",
        )
        watcher.expect_nothing()
        watcher.close()


def check_retained(port):
    for label, protocol in VERSIONS:
        topic = unique("paho/retained")
        pub = Client(port, protocol).connect()
        pub.publish(topic + "/a", b"kept", 1, retain=True)
        pub.publish(topic + "/marker", b"marker", 1, retain=True)

        first = Client(port, protocol).connect()
        first.subscribe(topic + "/#", 1)
        got = sorted((m.topic, m.payload, m.retain) for m in first.expect(2))
        want = [(topic + "/a", b"kept", True), (topic + "/marker", b"marker", True)]
        check(got == want, f"{label}: retained messages {got}, wanted {want}")

        # Live copies to the established subscription have the retain flag cleared.
        pub.publish(topic + "/a", b"replaced", 1, retain=True)
        (m,) = first.expect(1)
        check(
            (m.topic, m.payload, m.retain) == (topic + "/a", b"replaced", False),
            f"{label}: live copy {m.topic} {m.payload!r} retain {m.retain}",
        )

        # An empty retained message deletes it.
        pub.publish(topic + "/a", b"", 1, retain=True)
        (m,) = first.expect(1)
        check(m.payload == b"", f"{label}: delete message delivered as {m.payload!r}")
        second = Client(port, protocol).connect()
        second.subscribe(topic + "/#", 1)
        got = [(m.topic, m.payload, m.retain) for m in second.expect(1)]
        check(got == [(topic + "/marker", b"marker", True)], f"{label}: after delete got {got}")
        second.expect_nothing()
        for c in (pub, first, second):
            c.close()


def check_properties(port):
    topic = unique("paho/props")
    sub = Client(port, mqtt.MQTTv5).connect()
    sub_props = Properties(PacketTypes.SUBSCRIBE)
    sub_props.SubscriptionIdentifier = 7
    sub.subscribe(topic + "/#", 1, properties=sub_props)
    pub = Client(port, mqtt.MQTTv5).connect()

    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.UserProperty = [("a", "1"), ("b", "2"), ("a", "3"), ("ünï", "cödé")]
    props.CorrelationData = b"\x00\x01corr\xff"
    props.ResponseTopic = topic + "/reply"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 60
    pub.publish(topic + "/request", b'{"ask": 42}', 1, properties=props)

    (m,) = sub.expect(1)
    got = m.properties
    check(m.topic == topic + "/request", f"topic {m.topic}")
    check(m.payload == b'{"ask": 42}', f"payload {m.payload!r}")
    check(getattr(got, "ContentType", None) == "application/json", f"content type: {got}")
    check(
        getattr(got, "UserProperty", None) == [("a", "1"), ("b", "2"), ("a", "3"), ("ünï", "cödé")],
        f"user properties (order matters): {got}",
    )
    check(getattr(got, "CorrelationData", None) == b"\x00\x01corr\xff", f"correlation data: {got}")
    check(getattr(got, "ResponseTopic", None) == topic + "/reply", f"response topic: {got}")
    check(getattr(got, "PayloadFormatIndicator", None) == 1, f"payload format: {got}")
    expiry = getattr(got, "MessageExpiryInterval", None)
    check(expiry is not None and 55 <= expiry <= 60, f"message expiry: {got}")
    check(getattr(got, "SubscriptionIdentifier", None) == [7], f"subscription identifier: {got}")

    # A message without properties arrives without them (but with the subscription id).
    pub.publish(topic + "/plain", b"plain", 1)
    (m,) = sub.expect(1)
    plain = m.properties
    for name in ("ContentType", "UserProperty", "CorrelationData", "ResponseTopic",
                 "MessageExpiryInterval", "PayloadFormatIndicator"):
        check(not hasattr(plain, name), f"plain message has {name}: {plain}")
    pub.close()
    sub.close()


CHECKS = {
    "qos": check_qos,
    "will": check_will,
    "retained": check_retained,
    "properties": check_properties,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--check", choices=sorted(CHECKS), action="append",
                        help="check to run (repeatable; default: all)")
    args = parser.parse_args()
    for name in args.check or sorted(CHECKS):
        try:
            CHECKS[name](args.port)
        except Failure as e:
            print(f"FAIL: {name}: {e}")
            return 1
        except Exception as e:  # a paho or socket error: still a clear failure
            print(f"FAIL: {name}: {type(e).__name__}: {e}")
            return 1
        print(f"ok: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
