//! The bundled `sql` plugin and the `sql` capability, end to end: a real PostgreSQL started
//! by the test (`support::Postgres`) and SQLite files made by the test, real MQTT clients.

mod checks;
mod postgres;
mod sqlite;
mod support;
mod unit;
