//! `kv`: a plugin's private key-value space, shared by all its instances and generations,
//! bounded in entries and bytes, entries with an optional TTL. It lives in memory and does
//! not survive a restart: it is for caches.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::super::bindings::moat::policy::kv;
use super::super::bindings::moat::policy::types::CapabilityError;
use super::super::host::HostState;
use crate::config::KvGrant;

/// Longest key.
const MAX_KV_KEY: usize = 1024;

/// A plugin's private key-value space: bounded in entries and bytes, entries with a TTL.
pub(in crate::policy::wasm) struct KvSpace {
    entries: HashMap<String, (Vec<u8>, Option<Instant>)>,
    bytes: u64,
    max_entries: usize,
    max_bytes: u64,
}

impl KvSpace {
    pub(super) fn new(grant: &KvGrant) -> KvSpace {
        KvSpace {
            entries: HashMap::new(),
            bytes: 0,
            max_entries: grant.max_entries as usize,
            max_bytes: grant.max_bytes,
        }
    }

    fn size(key: &str, value: &[u8]) -> u64 {
        (key.len() + value.len()) as u64
    }

    fn remove(&mut self, key: &str) {
        if let Some((value, _)) = self.entries.remove(key) {
            self.bytes -= Self::size(key, &value);
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, (_, exp))| exp.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.remove(&k);
        }
    }

    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        match self.entries.get(key) {
            Some((_, Some(exp))) if *exp <= now => {
                self.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<(), CapabilityError> {
        if key.len() > MAX_KV_KEY {
            return Err(CapabilityError::Invalid(format!(
                "keys are at most {MAX_KV_KEY} bytes"
            )));
        }
        let size = Self::size(&key, &value);
        if size > self.max_bytes {
            return Err(CapabilityError::TooLarge);
        }
        self.remove(&key);
        let fits = |s: &Self| s.entries.len() < s.max_entries && s.bytes + size <= s.max_bytes;
        if !fits(self) {
            self.purge_expired(Instant::now());
            if !fits(self) {
                return Err(CapabilityError::QuotaExceeded);
            }
        }
        let expires = ttl.map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
        self.bytes += size;
        self.entries.insert(key, (value, expires));
        Ok(())
    }
}

impl kv::Host for HostState {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, CapabilityError>> {
        Ok(match &self.ctx.granted.kv {
            Some(space) => Ok(space.lock().get(&key)),
            None => Err(self.ctx.refuse("kv")),
        })
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<(), CapabilityError>> {
        Ok(match &self.ctx.granted.kv {
            Some(space) => space.lock().set(key, value, ttl_seconds),
            None => Err(self.ctx.refuse("kv")),
        })
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), CapabilityError>> {
        Ok(match &self.ctx.granted.kv {
            Some(space) => {
                space.lock().remove(&key);
                Ok(())
            }
            None => Err(self.ctx.refuse("kv")),
        })
    }
}
