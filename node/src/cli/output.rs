//! Rendering: Docker-style tables and JSON.

use serde::Serialize;

/// Prints `value` as pretty JSON.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints what `inspect` found: a JSON array (the default and `--format json`), each
/// object through a template (`--format '{{...}}'`), or `pretty(i)` of each (`--pretty`,
/// `--format table`).
pub fn print_inspect(
    found: &[serde_json::Value],
    out: &super::InspectArgs,
    pretty: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    use super::Format;
    match (&out.format, out.pretty) {
        (Some(Format::Table), _) | (_, true) => {
            let texts: Vec<String> = (0..found.len()).map(pretty).collect();
            print!("{}", texts.join("\n"));
            Ok(())
        }
        (Some(Format::Template(t)), false) => {
            let t = super::listing::Template::parse(t)?;
            for v in found {
                println!("{}", t.render(v)?);
            }
            Ok(())
        }
        (None | Some(Format::Json), false) => print_json(&found),
    }
}

/// Fails with the errors of the arguments that were not found, one line.
pub fn fail_if_any(failed: Vec<String>) -> anyhow::Result<()> {
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", failed.join("; "))
    }
}

/// Keeps the first 12 characters of an ID unless `--no-trunc`.
pub fn id(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.chars().take(12).collect()
    }
}

/// A table with left-aligned columns separated by three spaces, as `docker` prints.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            l.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 3;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = table(
            &["ID", "NAME"],
            &[vec!["a".into(), "x".into()], vec!["long".into(), "".into()]],
        );
        assert_eq!(t, "ID     NAME\na      x\nlong\n");
    }
}
