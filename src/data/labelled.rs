//! Labelled text files: one example per line, `label<TAB>text`.

use std::path::Path;

use crate::{Error, Result};

/// One labelled example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The label (the part before the first tab).
    pub label: String,
    /// The text (everything after the first tab; it may hold more tabs).
    pub text: String,
    /// The line it was read from, counted from 1 (for error messages).
    pub line: usize,
}

/// Parses `label<TAB>text` lines. Blank lines (empty or only whitespace) are skipped, a
/// trailing `\r` is dropped; a line without a tab, with an empty label or with an empty text is
/// an error that names `context` (a file name) and the line number, counted from 1.
///
/// ```
/// use recur::data::parse_labelled;
/// let ex = parse_labelled("en\thello\n\nfr\tbonjour\r\n", "words.tsv")?;
/// assert_eq!((ex[1].label.as_str(), ex[1].text.as_str(), ex[1].line), ("fr", "bonjour", 3));
/// let err = parse_labelled("en\thello\nbonjour\n", "words.tsv").unwrap_err();
/// assert_eq!(err.to_string(), "words.tsv: line 2: no tab between label and text: \"bonjour\"");
/// # Ok::<(), recur::Error>(())
/// ```
pub fn parse_labelled(text: &str, context: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (k, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| {
            let shown: String = line.chars().take(60).collect();
            Error::format(context, format!("line {}: {what}: {shown:?}", k + 1))
        };
        let Some((label, body)) = line.split_once('\t') else {
            return Err(bad("no tab between label and text"));
        };
        if label.trim().is_empty() {
            return Err(bad("empty label"));
        }
        if body.trim().is_empty() {
            return Err(bad("empty text"));
        }
        out.push(Example {
            label: label.trim().to_string(),
            text: body.to_string(),
            line: k + 1,
        });
    }
    Ok(out)
}

/// Reads a `label<TAB>text` file (see [`parse_labelled`]). The file must be UTF-8 and hold at
/// least one example; errors name the file.
pub fn read_labelled(path: &Path) -> Result<Vec<Example>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let ctx = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::format(
            &ctx,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    let ex = parse_labelled(&text, &ctx)?;
    if ex.is_empty() {
        return Err(Error::format(ctx, "no examples (the file is empty)"));
    }
    Ok(ex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_name_their_number() {
        let ok = parse_labelled("a\tx\ty\n", "f").unwrap();
        assert_eq!(ok[0].text, "x\ty");
        for (src, line, what) in [
            ("a\tx\n\n\tnolabel\n", 3, "empty label"),
            ("a\tx\nb\t  \n", 2, "empty text"),
            ("oops", 1, "no tab"),
        ] {
            let e = parse_labelled(src, "f.tsv").unwrap_err().to_string();
            assert!(e.starts_with(&format!("f.tsv: line {line}: {what}")), "{e}");
        }
        let missing = Path::new("/nonexistent/recur/labels.tsv");
        assert!(
            read_labelled(missing)
                .unwrap_err()
                .to_string()
                .contains("labels.tsv")
        );
    }
}
