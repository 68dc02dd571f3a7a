//! `ldap`: bind and search on a directory the broker connects to. Declared in the contract,
//! not implemented yet: every call answers `not-granted`, as an ungranted capability does.

use super::super::bindings::moat::policy::ldap;
use super::super::bindings::moat::policy::types::CapabilityError;
use super::super::host::HostState;

impl ldap::Host for HostState {
    async fn bind(
        &mut self,
        _directory: String,
        _dn: String,
        _password: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, CapabilityError>> {
        Ok(Err(self.ctx.refuse("ldap")))
    }

    async fn search(
        &mut self,
        _directory: String,
        _base: String,
        _scope: ldap::Scope,
        _filter: String,
        _attributes: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<ldap::Entry>, CapabilityError>> {
        Ok(Err(self.ctx.refuse("ldap")))
    }
}
