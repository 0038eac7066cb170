//! Compose's variable interpolation in scalar values: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+other}`, `${VAR+other}` and
//! `$$` for a literal `$`. Defaults and messages may themselves hold interpolations.

use std::collections::BTreeMap;

/// What a value's interpolation found besides its text.
#[derive(Debug, Default)]
pub struct Unset {
    /// Variables used without a value and without a default (they become empty, with a
    /// warning, as in compose).
    pub names: Vec<String>,
}

/// Replaces the variables in `s` from `env`. The error is one line (`:?`/`?` on an unset or
/// empty variable, or a malformed `${…}`).
pub fn interpolate(
    s: &str,
    env: &BTreeMap<String, String>,
    unset: &mut Unset,
) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = closing_brace(inner)
                .ok_or_else(|| format!("invalid interpolation in `{s}`: a `}}` is missing"))?;
            out.push_str(&braced(&inner[..end], s, env, unset)?);
            rest = &inner[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                // A `$` before anything else stays as it is.
                out.push('$');
                rest = after;
            } else {
                let name = &after[..len];
                match env.get(name) {
                    Some(v) => out.push_str(v),
                    None => note(unset, name),
                }
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn note(unset: &mut Unset, name: &str) {
    if !unset.names.iter().any(|n| n == name) {
        unset.names.push(name.to_string());
    }
}

/// The length of a variable name at the start of `s`: `[A-Za-z_][A-Za-z0-9_]*`.
fn name_len(s: &str) -> usize {
    let mut n = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        n = i + c.len_utf8();
    }
    n
}

/// The index of the `}` that closes a `${`, nested `${…}` skipped.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The value of `${inner}`.
fn braced(
    inner: &str,
    whole: &str,
    env: &BTreeMap<String, String>,
    unset: &mut Unset,
) -> Result<String, String> {
    let len = name_len(inner);
    if len == 0 {
        return Err(format!(
            "invalid interpolation `${{{inner}}}` in `{whole}`: a variable name is required"
        ));
    }
    let name = &inner[..len];
    let op = &inner[len..];
    let value = env.get(name);
    let set_non_empty = value.is_some_and(|v| !v.is_empty());
    let (kind, arg) = if op.is_empty() {
        ("", "")
    } else if let Some(a) = op.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = op.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = op.strip_prefix(":+") {
        (":+", a)
    } else if let Some(a) = op.strip_prefix('-') {
        ("-", a)
    } else if let Some(a) = op.strip_prefix('?') {
        ("?", a)
    } else if let Some(a) = op.strip_prefix('+') {
        ("+", a)
    } else {
        return Err(format!(
            "invalid interpolation `${{{inner}}}` in `{whole}`: expected ${{VAR}}, ${{VAR:-default}}, ${{VAR-default}}, ${{VAR:?message}} or ${{VAR?message}}"
        ));
    };
    match kind {
        "" => Ok(value.cloned().unwrap_or_else(|| {
            note(unset, name);
            String::new()
        })),
        ":-" if set_non_empty => Ok(value.cloned().unwrap_or_default()),
        ":-" => interpolate(arg, env, unset),
        "-" => match value {
            Some(v) => Ok(v.clone()),
            None => interpolate(arg, env, unset),
        },
        ":?" if set_non_empty => Ok(value.cloned().unwrap_or_default()),
        "?" if value.is_some() => Ok(value.cloned().unwrap_or_default()),
        ":?" | "?" => {
            let message = interpolate(arg, env, unset)?;
            let why = if value.is_some() { "empty" } else { "not set" };
            if message.is_empty() {
                Err(format!("required variable {name} is {why}"))
            } else {
                Err(format!("required variable {name} is {why}: {message}"))
            }
        }
        ":+" if set_non_empty => interpolate(arg, env, unset),
        "+" if value.is_some() => interpolate(arg, env, unset),
        _ => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("TAG", "1.2"), ("EMPTY", ""), ("PORT", "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(s: &str) -> Result<String, String> {
        interpolate(s, &env(), &mut Unset::default())
    }

    #[test]
    fn issue_23_stack_interpolation_forms() {
        assert_eq!(run("nginx:${TAG}").unwrap(), "nginx:1.2");
        assert_eq!(run("nginx:$TAG-x").unwrap(), "nginx:1.2-x");
        assert_eq!(run("${MISSING:-alpine}").unwrap(), "alpine");
        assert_eq!(run("${EMPTY:-alpine}").unwrap(), "alpine");
        assert_eq!(run("${EMPTY-alpine}").unwrap(), "");
        assert_eq!(run("${MISSING-alpine}").unwrap(), "alpine");
        assert_eq!(run("${MISSING:-${PORT}}:80").unwrap(), "8080:80");
        assert_eq!(run("cost $$5 and $").unwrap(), "cost $5 and $");
        assert_eq!(run("${TAG:+set}${MISSING:+x}").unwrap(), "set");
        let mut unset = Unset::default();
        assert_eq!(
            interpolate("a${NOPE}b$NOPE", &env(), &mut unset).unwrap(),
            "ab"
        );
        assert_eq!(unset.names, vec!["NOPE".to_string()]);
    }

    #[test]
    fn issue_23_stack_interpolation_required_variables() {
        assert_eq!(
            run("${DB_PASSWORD:?set DB_PASSWORD}").unwrap_err(),
            "required variable DB_PASSWORD is not set: set DB_PASSWORD"
        );
        assert_eq!(
            run("${EMPTY:?}").unwrap_err(),
            "required variable EMPTY is empty"
        );
        assert_eq!(run("${EMPTY?}").unwrap(), "");
        assert!(
            run("${MISSING?oops}")
                .unwrap_err()
                .contains("not set: oops")
        );
        assert!(run("${TAG").unwrap_err().contains("a `}` is missing"));
        assert!(
            run("${1X}")
                .unwrap_err()
                .contains("a variable name is required")
        );
        assert!(run("${TAG/x}").unwrap_err().contains("expected"));
    }
}
