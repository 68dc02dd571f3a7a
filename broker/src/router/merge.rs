//! Turning the ordinary subscriptions that match one topic into one [`Route`] per subscriber.
//!
//! A subscriber whose subscriptions overlap (`a/+` and `a/#`) gets one delivery carrying the
//! highest QoS, every identifier and Retain As Published if any asks for it (MQTT-3.3.4-2,
//! MQTT-3.3.4-3). A subscriber appears at most once per matching filter, so merging is needed
//! only when two or more filters match, and then at a cost that grows with the smaller lists:
//!
//! * one matching list: copied straight out, nothing to look up;
//! * the largest list, when it keeps its own subscriber index (see `sublist.rs`), is copied
//!   straight out too, and the other lists find their subscribers in it through that index;
//! * what remains is merged by a linear scan over the subscribers routed so far, switching to
//!   a `HashMap` built for this call only once more than [`SCAN_MERGE_MAX`] distinct
//!   subscribers outside the anchor have been routed.
//!
//! So a fan-out to thousands of `fleet/+/+/alarm` subscribers that also overlaps a few hundred
//! `fleet/site3/#` ones hashes a few hundred subscribers, not thousands, and the common case
//! of a few small lists allocates nothing.

use std::collections::HashMap;
use std::hash::Hash;

use smallvec::SmallVec;

use super::sublist::{SubList, Subscription};
use super::tree::Route;

/// Up to this many subscribers routed outside the anchor list are merged by a linear scan.
const SCAN_MERGE_MAX: usize = 32;

/// Appends one [`Route`] per subscriber in `lists` to `out`, skipping No Local subscriptions of
/// `publisher` (MQTT-3.8.3-3). Each list holds at most one entry per subscriber.
pub(crate) fn push_ordinary<S: Clone + Eq + Hash>(
    lists: &[&SubList<S>],
    publisher: Option<&S>,
    out: &mut Vec<Route<S>>,
) {
    let keep = |s: &&Subscription<S>| !(s.options.no_local && publisher == Some(&s.subscriber));
    let anchor = match lists {
        [] => return,
        [only] => {
            out.extend(only.as_slice().iter().filter(keep).map(new_route));
            return;
        }
        _ => lists
            .iter()
            .enumerate()
            .max_by_key(|(_, list)| list.len())
            .filter(|(_, list)| list.is_indexed()),
    };

    // The anchor's routes go first, in its order, less the publisher's No Local entry if any;
    // `anchored(pos)` is where the anchor's entry `pos` landed in `out`.
    let start = out.len();
    let mut skipped = None;
    if let Some((_, list)) = anchor {
        let entries = list.as_slice();
        skipped = publisher
            .and_then(|p| list.position(p))
            .filter(|&pos| entries[pos].options.no_local);
        out.extend(entries.iter().filter(keep).map(new_route));
    }
    let anchored = |pos: usize| start + pos - usize::from(skipped.is_some_and(|s| pos > s));

    // Subscribers routed from outside the anchor, in `out[rest_start..]` order: scanned while
    // there are few, then moved into a map.
    let rest_start = out.len();
    let mut rest: SmallVec<[&S; SCAN_MERGE_MAX]> = SmallVec::new();
    let mut rest_map: Option<HashMap<&S, usize>> = None;

    for (i, list) in lists.iter().enumerate() {
        if anchor.is_some_and(|(a, _)| a == i) {
            continue;
        }
        for s in list.as_slice().iter().filter(keep) {
            if let Some((_, big)) = anchor
                && let Some(pos) = big.position(&s.subscriber)
                && skipped != Some(pos)
            {
                merge_into(&mut out[anchored(pos)], s);
                continue;
            }
            let found = match &rest_map {
                Some(map) => map.get(&s.subscriber).copied(),
                None => rest
                    .iter()
                    .position(|&r| r == &s.subscriber)
                    .map(|p| rest_start + p),
            };
            if let Some(at) = found {
                merge_into(&mut out[at], s);
                continue;
            }
            let at = out.len();
            out.push(new_route(s));
            match &mut rest_map {
                Some(map) => {
                    map.insert(&s.subscriber, at);
                }
                None if rest.len() < SCAN_MERGE_MAX => rest.push(&s.subscriber),
                None => {
                    let mut map: HashMap<&S, usize> = HashMap::with_capacity(4 * SCAN_MERGE_MAX);
                    map.extend(rest.iter().enumerate().map(|(p, &r)| (r, rest_start + p)));
                    map.insert(&s.subscriber, at);
                    rest_map = Some(map);
                }
            }
        }
    }
}

/// The Route of one subscription on its own.
pub(crate) fn new_route<S: Clone>(sub: &Subscription<S>) -> Route<S> {
    Route {
        subscriber: sub.subscriber.clone(),
        qos: sub.options.qos,
        retain_as_published: sub.options.retain_as_published,
        identifiers: sub.identifier.into_iter().collect(),
    }
}

/// Folds one more matching subscription into a subscriber's Route. An identifier that is
/// already there (two filters subscribed with the same identifier) is not repeated.
fn merge_into<S>(route: &mut Route<S>, sub: &Subscription<S>) {
    route.qos = route.qos.max(sub.options.qos);
    route.retain_as_published |= sub.options.retain_as_published;
    if let Some(id) = sub.identifier
        && !route.identifiers.contains(&id)
    {
        route.identifiers.push(id);
    }
}
