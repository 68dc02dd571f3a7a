//! Putting untrusted text (a user name) into LDAP distinguished names and search filters.
//!
//! A user name spliced into `uid={username},ou=people,dc=example,dc=org` or
//! `(&(objectClass=person)(uid={username}))` as it is would let `alice,ou=admins` or
//! `*)(uid=*` change what the DN names or what the filter matches. These escape a value so it
//! stays one attribute value:
//! - [`dn_value`]: RFC 4514 section 2.4: `"`, `+`, `,`, `;`, `<`, `>`, `\`, `=` and NUL
//!   anywhere, `#` and space at the start and space at the end, as `\XX` hex pairs (which
//!   every reader of the RFC understands, unlike the shorter `\,` forms some parsers miss);
//! - [`filter_value`]: RFC 4515 section 3: `*`, `(`, `)`, `\` and NUL as `\XX`.
//!
//! [`fill`] puts an escaped value into a template's `{name}` placeholders.

/// `value` escaped as an attribute value of a DN (RFC 4514).
pub fn dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' | '\0')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push_str(&format!("\\{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `value` escaped as an assertion value of a search filter (RFC 4515).
pub fn filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if matches!(c, '*' | '(' | ')' | '\\' | '\0') {
            out.push_str(&format!("\\{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `template` with every `{name}` replaced by `value` (already escaped for where it goes).
pub fn fill(template: &str, name: &str, value: &str) -> String {
    template.replace(&format!("{{{name}}}"), value)
}

/// The value of the first RDN of `dn`, unescaped: `operators` for
/// `cn=operators,ou=groups,dc=example,dc=org`. `None` if `dn` does not start with
/// `attribute=value`.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    let (_, rest) = dn.split_once('=')?;
    let mut out = Vec::new();
    let mut bytes = rest.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b',' | b'+' => break,
            b'\\' => {
                let first = bytes.next()?;
                let hex = |b: u8| (b as char).to_digit(16);
                match hex(first) {
                    Some(high) => {
                        let low = hex(bytes.next()?)?;
                        out.push((high * 16 + low) as u8);
                    }
                    None => out.push(first),
                }
            }
            b => out.push(b),
        }
    }
    let value = String::from_utf8(out).ok()?;
    (!value.is_empty()).then(|| value.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_values_cannot_add_rdns_or_attributes() {
        assert_eq!(dn_value("alice"), "alice");
        assert_eq!(dn_value("alice,ou=admins"), "alice\\2cou\\3dadmins");
        assert_eq!(dn_value("a+cn=b"), "a\\2bcn\\3db");
        assert_eq!(dn_value("\"x\";<y>\\"), "\\22x\\22\\3b\\3cy\\3e\\5c");
        assert_eq!(dn_value("#lead"), "\\23lead");
        assert_eq!(dn_value(" both "), "\\20both\\20");
        assert_eq!(dn_value("mid dle#"), "mid dle#");
        assert_eq!(dn_value("nul\0"), "nul\\00");
        assert_eq!(dn_value("*"), "*", "a star is plain text in a DN");
        assert_eq!(dn_value("Jürgen"), "Jürgen");
        assert_eq!(dn_value(""), "");
    }

    #[test]
    fn filter_values_cannot_close_the_filter_or_wildcard() {
        assert_eq!(filter_value("alice"), "alice");
        assert_eq!(filter_value("*"), "\\2a");
        assert_eq!(filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(filter_value("a\\b"), "a\\5cb");
        assert_eq!(filter_value("nul\0"), "nul\\00");
        assert_eq!(filter_value("a,b"), "a,b");
    }

    #[test]
    fn templates_are_filled_with_escaped_values() {
        let dn = fill(
            "uid={username},ou=people,dc=example,dc=org",
            "username",
            &dn_value("eve,ou=admins"),
        );
        assert_eq!(dn, "uid=eve\\2cou\\3dadmins,ou=people,dc=example,dc=org");
        let f = fill("(&(uid={username})(x={username}))", "username", "a");
        assert_eq!(f, "(&(uid=a)(x=a))");
    }

    #[test]
    fn first_rdn_values_are_unescaped() {
        let name = |dn: &str| first_rdn_value(dn);
        assert_eq!(
            name("cn=operators,ou=groups,dc=example,dc=org").as_deref(),
            Some("operators")
        );
        assert_eq!(name("cn=a\\2cb,dc=x").as_deref(), Some("a,b"));
        assert_eq!(name("cn=a\\,b,dc=x").as_deref(), Some("a,b"));
        assert_eq!(name("cn=solo").as_deref(), Some("solo"));
        assert_eq!(name("no equals"), None);
        assert_eq!(name("cn=,dc=x"), None);
    }
}
