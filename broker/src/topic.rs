//! Topic names and topic filters (section 4.7): validation, shared-subscription syntax
//! (section 4.8.2) and matching of one filter against one name.
