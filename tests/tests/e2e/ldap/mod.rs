//! The bundled `ldap` plugin against a real OpenLDAP server started by the tests (`slapd`):
//! hook by hook through the SDK's harness (`unit`), and behind a real broker with real MQTT
//! clients (`broker`); and the broker's `ldap` capability on its own (`capability`).

mod broker;
mod capability;
mod slapd;
mod unit;
