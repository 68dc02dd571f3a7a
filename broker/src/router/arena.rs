//! A slab of trie nodes addressed by `u32` index, shared by both tries in this module.
//!
//! Keeping nodes in one `Vec` instead of as nested `Box`es means no operation on a trie
//! recurses: a filter or topic can have up to 32768 levels, and a recursive walk, insert or
//! even `Drop` of a chain that deep would overflow a 2 MiB task stack. Walks use explicit
//! stacks, pruning walks back along a recorded path, and dropping the arena drops a flat `Vec`.
//!
//! Freed slots are reset to `N::default()` (releasing whatever the node owned) and reused by
//! later allocations, so the slab stays at its high-water mark; when only the root is left the
//! slab is released entirely.

use std::ops::{Index, IndexMut};

/// Index of a node in an [`Arena`].
pub(crate) type NodeId = u32;

/// The root node: allocated by [`Arena::with_root`] and never freed.
pub(crate) const ROOT: NodeId = 0;

#[derive(Debug)]
pub(crate) struct Arena<N> {
    slots: Vec<N>,
    free: Vec<NodeId>,
}

impl<N: Default> Arena<N> {
    /// An arena holding just an empty root at [`ROOT`].
    pub(crate) fn with_root() -> Self {
        Arena {
            slots: vec![N::default()],
            free: Vec::new(),
        }
    }

    pub(crate) fn alloc(&mut self) -> NodeId {
        if let Some(id) = self.free.pop() {
            return id;
        }
        let id = NodeId::try_from(self.slots.len()).expect("more than 2^32 trie nodes");
        self.slots.push(N::default());
        id
    }

    /// Frees a node. The caller has already unlinked it from its parent.
    pub(crate) fn free(&mut self, id: NodeId) {
        debug_assert_ne!(id, ROOT, "the root is never freed");
        self.slots[id as usize] = N::default();
        self.free.push(id);
        if self.live() == 1 {
            self.slots.truncate(1);
            self.slots.shrink_to_fit();
            self.free = Vec::new();
        }
    }

    /// Number of nodes in use, the root included.
    pub(crate) fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl<N> Index<NodeId> for Arena<N> {
    type Output = N;
    fn index(&self, id: NodeId) -> &N {
        &self.slots[id as usize]
    }
}

impl<N> IndexMut<NodeId> for Arena<N> {
    fn index_mut(&mut self, id: NodeId) -> &mut N {
        &mut self.slots[id as usize]
    }
}

/// Shrinks a map that has lost most of its entries, so a node that once had many children does
/// not keep their table after they are gone. Amortised O(1): it only fires below a quarter full.
pub(crate) fn shrink_map<K: Eq + std::hash::Hash, V>(map: &mut std::collections::HashMap<K, V>) {
    if map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

/// The same for a `Vec`.
pub(crate) fn shrink_vec<T>(v: &mut Vec<T>) {
    if v.len() * 4 < v.capacity() {
        v.shrink_to_fit();
    }
}
