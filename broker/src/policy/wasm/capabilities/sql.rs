//! `sql`: queries on a connection the broker owns. Declared in the contract, not implemented
//! yet: every call answers `not-granted`, as an ungranted capability does.

use super::super::bindings::moat::policy::sql;
use super::super::bindings::moat::policy::types::CapabilityError;
use super::super::host::HostState;

impl sql::Host for HostState {
    async fn query(
        &mut self,
        _connection: String,
        _statement: String,
        _params: Vec<sql::Value>,
    ) -> wasmtime::Result<Result<sql::Rows, CapabilityError>> {
        Ok(Err(self.ctx.refuse("sql")))
    }
}
