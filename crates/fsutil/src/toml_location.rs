//! Where in a TOML text a parse or schema error is: line, column and key, so that every config
//! and bundle error can say "file:line: key `x`: what is wrong".

/// The place a [`toml::de::Error`] points at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TomlLocation {
    /// 1-based; `None` when toml gave no span (e.g. a missing top-level key).
    pub line: Option<usize>,
    /// 1-based, in characters; `None` with `line`.
    pub column: Option<usize>,
    /// The key concerned, as written on its line (`max_connections`), when known.
    pub key: Option<String>,
    /// The `[table]` or `[[array]]` header above the key, without brackets (`limits`).
    pub table: Option<String>,
    /// toml's own message, trimmed.
    pub message: String,
}

impl TomlLocation {
    /// The key with its table, as a dotted path: `limits.max_connections`.
    pub fn qualified_key(&self) -> Option<String> {
        let key = self.key.as_deref()?;
        Some(match self.table.as_deref() {
            Some(table) if !table.is_empty() => format!("{table}.{key}"),
            _ => key.to_owned(),
        })
    }
}

/// Locates `err`, raised while parsing `text`.
pub fn toml_location(text: &str, err: &toml::de::Error) -> TomlLocation {
    let message = err.message().trim().to_owned();
    let unknown = unknown_field(&message);
    let Some(span) = err.span() else {
        return TomlLocation {
            key: unknown,
            message,
            ..TomlLocation::default()
        };
    };
    let start = span.start.min(text.len());
    // A span can start inside a multi-byte character only if toml is wrong; stay safe anyway.
    let start = (0..=start)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let before = &text[..start];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(key, _)| key.trim().trim_matches('"').to_owned())
        .filter(|key| !key.is_empty() && !key.starts_with('['))
        .or(unknown);
    let table = key.as_ref().and_then(|_| {
        before
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .map(|header| header.trim_matches(['[', ']']).trim().to_owned())
    });
    TomlLocation {
        line: Some(before.matches('\n').count() + 1),
        column: Some(text[line_start..start].chars().count() + 1),
        key,
        table,
        message,
    }
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(dead_code)] // only parsed, to get serde's errors
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        name: Option<String>,
        limits: Option<Limits>,
    }

    #[allow(dead_code)]
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        max_connections: Option<u32>,
    }

    fn locate(text: &str) -> TomlLocation {
        let err = toml::from_str::<Config>(text).expect_err("the text is invalid");
        toml_location(text, &err)
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let loc = locate("name = \"a\"\nnmae = \"b\"\n");
        assert_eq!((loc.line, loc.column), (Some(2), Some(1)));
        assert_eq!(loc.key.as_deref(), Some("nmae"));
        assert_eq!(loc.qualified_key().as_deref(), Some("nmae"));
        assert!(loc.message.contains("unknown field"), "{}", loc.message);
    }

    #[test]
    fn wrong_type_in_a_table_names_the_dotted_key_and_column() {
        let loc = locate("\n[limits]\nmax_connections = \"many\"\n");
        assert_eq!((loc.line, loc.column), (Some(3), Some(19)));
        assert_eq!(loc.key.as_deref(), Some("max_connections"));
        assert_eq!(loc.table.as_deref(), Some("limits"));
        assert_eq!(
            loc.qualified_key().as_deref(),
            Some("limits.max_connections")
        );
    }

    #[test]
    fn syntax_error_has_a_line_and_no_invented_table() {
        let loc = locate("name = yes\n");
        assert_eq!(loc.line, Some(1));
        assert_eq!(loc.key.as_deref(), Some("name"));
        assert_eq!(loc.table, None);
    }

    #[test]
    fn multibyte_text_before_the_error_counts_characters() {
        let loc = locate("name = \"\u{e9}t\u{e9}\"\n[limits]\nmax_connections = -1\n");
        assert_eq!(loc.line, Some(3));
        assert_eq!(
            loc.qualified_key().as_deref(),
            Some("limits.max_connections")
        );
    }
}
