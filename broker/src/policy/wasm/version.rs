//! Which versions of the `moat:policy` contract this host accepts.
//!
//! The host implements `moat:policy@0.1.0` and accepts plugins built against any `0.1.x`: in a
//! `0.x` series the contract only ever gains functions in later patch versions, and never
//! changes one, so wasmtime resolves a `0.1.x` import or export against this host's `0.1.0`
//! (semver-compatible names). A plugin built for a later `0.1.x` that uses a function this host
//! does not have fails to link, naming it. Any other version (`0.2`, `1.0`) is refused here,
//! before linking, with a message that says which version the plugin wants.

use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::LoadError;

/// The contract version the host implements.
pub const CONTRACT: &str = "0.1.0";
/// The `major.minor` series it accepts.
const SERIES: (u64, u64) = (0, 1);

/// Checks every `moat:policy` import and export of `component`.
pub fn check(component: &Component) -> Result<(), LoadError> {
    let engine = component.engine();
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(n, _)| n)
        .chain(ty.exports(engine).map(|(n, _)| n));
    let mut exports_hooks = false;
    for name in names {
        let Some(rest) = name.strip_prefix("moat:policy/") else {
            continue;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        if !accepts(version) {
            return Err(LoadError::Contract(format!(
                "it was built for moat:policy@{version} ({interface}); this broker implements \
                 moat:policy@{CONTRACT} and accepts plugins built for any 0.1.x"
            )));
        }
        exports_hooks |= interface == "hooks";
    }
    let hooks_exported = ty.exports(engine).any(|(n, item)| {
        n.starts_with("moat:policy/hooks@")
            && matches!(item.ty, ComponentItem::ComponentInstance(_))
    });
    if !exports_hooks || !hooks_exported {
        return Err(LoadError::Contract(
            "it does not export moat:policy/hooks (is it a moat policy plugin?)".into(),
        ));
    }
    Ok(())
}

/// True for a `0.1.x` version string.
fn accepts(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(Some(major)), Some(Some(minor)), Some(Some(_)), None) if (major, minor) == SERIES
    )
}

#[cfg(test)]
mod tests {
    use super::accepts;

    #[test]
    fn every_patch_of_the_series_and_nothing_else() {
        for ok in ["0.1.0", "0.1.1", "0.1.42"] {
            assert!(accepts(ok), "{ok}");
        }
        for bad in ["0.2.0", "1.0.0", "0.0.9", "0.1", "", "0.1.0-rc1", "0.1.x"] {
            assert!(!accepts(bad), "{bad}");
        }
    }
}
