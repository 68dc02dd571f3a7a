//! `http`: outgoing HTTP(S) to the hosts the grant lists. Declared in the contract, not
//! implemented yet: every call answers `not-granted`, as an ungranted capability does.

use super::super::bindings::moat::policy::http;
use super::super::bindings::moat::policy::types::CapabilityError;
use super::super::host::HostState;

impl http::Host for HostState {
    async fn fetch(
        &mut self,
        _request: http::Request,
    ) -> wasmtime::Result<Result<http::Response, CapabilityError>> {
        Ok(Err(self.ctx.refuse("http")))
    }
}
