//! The bundled `jwt` plugin: unit tests through the plugin SDK's harness (`unit`: forged
//! signatures, `alg: none`, algorithm confusion, expiry, issuer and audience, the key-set
//! refresh limit) and end-to-end tests behind a real broker with real clients and a JWKS
//! server on a loopback port (`broker`).

mod broker;
mod support;
mod unit;
