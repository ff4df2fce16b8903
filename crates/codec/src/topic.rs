//! Topic names and filters (spec 4.7) and shared subscriptions (spec 4.8.2): validation and
//! matching. Pure functions; the broker's subscription trie uses the validators and
//! [`matches`] is its reference implementation.

/// The prefix of a shared subscription filter: `$share/{group}/{filter}`.
pub const SHARE_PREFIX: &str = "$share/";

/// Topic strings are MQTT UTF-8 strings, so at most 65535 bytes.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is invalid. Each names the normative statement it enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic must be at least one character long (MQTT-4.7.3-1)")]
    Empty,
    #[error("topic is longer than 65535 bytes (MQTT-4.7.3-3)")]
    TooLong,
    #[error("topic must not contain the null character U+0000 (MQTT-4.7.3-2)")]
    NullCharacter,
    #[error("topic name must not contain the wildcards '+' or '#' (MQTT-3.3.2-2)")]
    WildcardInName,
    #[error("'#' must be the last character of a filter and fill a whole level (MQTT-4.7.1-2)")]
    MultiLevelWildcard,
    #[error("'+' must fill a whole level of a filter (MQTT-4.7.1-3)")]
    SingleLevelWildcard,
    #[error(
        "shared subscription must be '$share/{{group}}/{{filter}}' with a non-empty group \
         without '+', '#' or '/' and a non-empty filter (MQTT-4.8.2-1, MQTT-4.8.2-2)"
    )]
    InvalidShare,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Checks a topic name (what PUBLISH carries): non-empty, no wildcards, no U+0000.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter (what SUBSCRIBE and UNSUBSCRIBE carry), including the
/// `$share/{group}/{filter}` form.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let inner = match filter.strip_prefix(SHARE_PREFIX) {
        Some(_) => parse_shared(filter).ok_or(TopicError::InvalidShare)?.filter,
        None => filter,
    };
    validate_plain_filter(inner)
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcard);
        }
    }
    Ok(())
}

/// Why a topic name or filter exceeds a server's configured bounds (valid by the spec,
/// refused by policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicLimitError {
    #[error("topic has {levels} or more levels, the server allows at most {max}")]
    TooManyLevels { levels: usize, max: usize },
    #[error("topic is {len} bytes long, the server allows at most {max}")]
    TooLong { len: usize, max: usize },
}

/// Checks a topic name or filter (a shared one counted whole) against a maximum number of
/// levels and bytes. Stops counting at the first level over the limit, so the cost is
/// bounded by `max_levels`, not by the input.
pub fn check_limits(topic: &str, max_levels: usize, max_len: usize) -> Result<(), TopicLimitError> {
    if topic.len() > max_len {
        return Err(TopicLimitError::TooLong {
            len: topic.len(),
            max: max_len,
        });
    }
    let levels = topic
        .bytes()
        .filter(|b| *b == b'/')
        .take(max_levels)
        .count()
        + 1;
    if levels > max_levels {
        return Err(TopicLimitError::TooManyLevels {
            levels,
            max: max_levels,
        });
    }
    Ok(())
}

/// Whether `filter` contains a wildcard.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// A parsed `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// Splits a shared subscription filter; `None` if `filter` is not one or its group is
/// invalid. The inner filter is not validated here (see [`validate_topic_filter`]).
pub fn parse_shared(filter: &str) -> Option<SharedFilter<'_>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return None;
    }
    Some(SharedFilter {
        group,
        filter: inner,
    })
}

/// Whether the topic name `topic` matches the (non-shared, valid) filter `filter`.
///
/// Filters starting with a wildcard do not match topics starting with `$` (MQTT-4.7.2-1);
/// `a/#` matches `a` itself (spec 4.7.1.2); `+` matches one level, which may be empty.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_4_7_3_1_topics_must_not_be_empty() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn mqtt_4_7_3_2_topics_must_not_contain_null() {
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(
            validate_topic_filter("a/\0"),
            Err(TopicError::NullCharacter)
        );
    }

    #[test]
    fn mqtt_4_7_3_3_topics_at_most_65535_bytes() {
        let long = "a".repeat(65_536);
        assert_eq!(validate_topic_name(&long), Err(TopicError::TooLong));
        assert!(validate_topic_name(&long[1..]).is_ok());
    }

    #[test]
    fn mqtt_3_3_2_2_topic_name_must_not_contain_wildcards() {
        assert_eq!(
            validate_topic_name("a/+/b"),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a+"), Err(TopicError::WildcardInName));
        assert!(validate_topic_name("a/b c/$d").is_ok());
        assert!(validate_topic_name("/").is_ok());
    }

    #[test]
    fn mqtt_4_7_1_2_multi_level_wildcard_last_and_alone() {
        for ok in ["#", "a/#", "/#", "+/#"] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a#", "a/#/b", "#/", "a/b#", "##"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::MultiLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_1_3_single_level_wildcard_fills_level() {
        for ok in ["+", "+/+", "a/+/b", "/+", "+/"] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a+", "a/+b", "++", "a/b+/c"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::SingleLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_2_1_wildcards_do_not_match_dollar_topics() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(matches("$SYS/+/uptime", "$SYS/broker/uptime"));
    }

    #[test]
    fn matching_follows_spec_examples() {
        // Spec 4.7.1.2 and 4.7.1.3 examples.
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("A/b", "a/b"));
    }

    #[test]
    fn mqtt_4_8_2_1_share_name_must_be_non_empty_and_followed_by_filter() {
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Some(SharedFilter {
                group: "g",
                filter: "a/+"
            })
        );
        assert!(validate_topic_filter("$share/g/a/+").is_ok());
        assert!(validate_topic_filter("$share/g/#").is_ok());
        for bad in ["$share//a", "$share/g", "$share/g/", "$share/"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::InvalidShare),
                "{bad}"
            );
        }
    }

    #[test]
    fn mqtt_4_8_2_2_share_name_must_not_contain_wildcards() {
        assert_eq!(
            validate_topic_filter("$share/g+/a"),
            Err(TopicError::InvalidShare)
        );
        assert_eq!(
            validate_topic_filter("$share/#/a"),
            Err(TopicError::InvalidShare)
        );
        assert_eq!(
            validate_topic_filter("$share/g/a#"),
            Err(TopicError::MultiLevelWildcard)
        );
    }

    #[test]
    fn limits_bound_levels_and_bytes() {
        assert_eq!(check_limits("a/b/c", 3, 5), Ok(()));
        assert_eq!(
            check_limits("a/b/c/d", 3, 100),
            Err(TopicLimitError::TooManyLevels { levels: 4, max: 3 })
        );
        assert_eq!(
            check_limits("abcdef", 3, 5),
            Err(TopicLimitError::TooLong { len: 6, max: 5 })
        );
        let deep = "/".repeat(30_000);
        assert!(matches!(
            check_limits(&deep, 32, 65_535),
            Err(TopicLimitError::TooManyLevels { max: 32, .. })
        ));
    }

    #[test]
    fn non_share_dollar_filters_are_plain() {
        assert!(parse_shared("$sharex/g/a").is_none());
        assert!(validate_topic_filter("$SYS/#").is_ok());
    }
}
