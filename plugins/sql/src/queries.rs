//! The operator's queries: which parameters each one takes, and reading their answers.
//!
//! Every query may use `$1` (the user name) and `$2` (the client identifier), bound by the
//! broker, never spliced into the text; a query gets exactly the parameters up to the highest
//! one it uses (PostgreSQL refuses a surplus). Text inside single-quoted literals does not
//! count, so `LIKE '$7$%'` is not a parameter.

use moat_plugin_sdk::acl::{Access, Rule};
use moat_plugin_sdk::sql::Value;

/// A configured query and how many parameters it takes (0 to 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub text: String,
    arity: usize,
}

impl Query {
    /// Checks which parameters `text` uses; `key` names it in the error.
    pub fn new(key: &str, text: &str) -> Result<Query, String> {
        if text.trim().is_empty() {
            return Err(format!("`{key}` is empty"));
        }
        let mut arity = 0;
        for n in parameters(text) {
            if !(1..=2).contains(&n) {
                return Err(format!(
                    "`{key}` uses ${n}; queries take $1 (the user name) and $2 (the client \
                     identifier)"
                ));
            }
            arity = arity.max(n);
        }
        Ok(Query {
            text: text.to_owned(),
            arity,
        })
    }

    /// The parameters to bind for `user` on `client_id`.
    pub fn params(&self, user: &str, client_id: &str) -> Vec<Value> {
        [user, client_id][..self.arity]
            .iter()
            .map(|v| Value::Text((*v).to_owned()))
            .collect()
    }
}

/// The numbers of the `$N` placeholders outside quoted literals and identifiers.
fn parameters(text: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '$') => {
                let digits: String = text[i + 1..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(n) = digits.parse() {
                    found.push(n);
                }
            }
            _ => {}
        }
    }
    found
}

/// The first column of the first row as text: a stored hash or verifier. `Ok(None)` for no
/// row or NULL.
pub fn first_text(rows: &[Vec<Value>]) -> Result<Option<String>, String> {
    match rows.first().and_then(|r| r.first()) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Text(t)) => Ok(Some(t.clone())),
        Some(other) => Err(format!("expected text in the first column, got {other:?}")),
    }
}

/// Whether a superuser query's answer says yes: a first row whose first column is true, a
/// non-zero number, or `t`/`true`/`1`/`yes`.
pub fn truthy(rows: &[Vec<Value>]) -> bool {
    match rows.first().and_then(|r| r.first()) {
        Some(Value::Boolean(b)) => *b,
        Some(Value::Integer(i)) => *i != 0,
        Some(Value::Text(t)) => {
            matches!(t.to_ascii_lowercase().as_str(), "t" | "true" | "1" | "yes")
        }
        _ => false,
    }
}

/// The ACL query's rows as rules: a topic filter (with `%u` and `%c` placeholders) and an
/// access, `read`, `write`, `readwrite` or `deny`, or Mosquitto-go-auth's numbers 1 (read),
/// 2 (write) and 3 (readwrite). One row that cannot be read fails the whole answer: skipping a
/// `deny` row would widen what the user may do.
pub fn rules(rows: &[Vec<Value>]) -> Result<Vec<Rule>, String> {
    rows.iter()
        .map(|row| {
            let (Some(Value::Text(filter)), Some(access)) = (row.first(), row.get(1)) else {
                return Err(format!(
                    "an ACL row is (topic filter, access), got {row:?}"
                ));
            };
            let access = match access {
                Value::Text(word) => Access::parse(&word.to_ascii_lowercase()),
                Value::Integer(1) => Some(Access::Read),
                Value::Integer(2) => Some(Access::Write),
                Value::Integer(3) => Some(Access::ReadWrite),
                _ => None,
            }
            .ok_or_else(|| {
                format!("ACL row for {filter:?}: access {access:?} is not read, write, readwrite or deny")
            })?;
            Rule::new(access, filter, true)
        })
        .collect()
}
