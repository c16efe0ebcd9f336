//! The cookie shapes the web layer needs, in one place, so no handler spells
//! the security attributes itself (see [`crate::session`] for why these).

/// Attributes every careconnect cookie carries: sent back to this host only,
/// over HTTPS only, never readable by scripts, not sent on cross-site
/// sub-requests or POSTs.
const ATTRIBUTES: &str = "Path=/; Secure; HttpOnly; SameSite=Lax";

/// A `Set-Cookie` value for `name=value` living `max_age_secs`.
pub(crate) fn set(name: &str, value: &str, max_age_secs: u64) -> String {
    format!("{name}={value}; {ATTRIBUTES}; Max-Age={max_age_secs}")
}

/// A `Set-Cookie` value that removes `name`.
pub(crate) fn clear(name: &str) -> String {
    format!("{name}=; {ATTRIBUTES}; Max-Age=0")
}

/// The value of the first cookie called `name` in a `Cookie` request header.
pub(crate) fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_find() {
        assert_eq!(
            set("__Host-x", "v", 60),
            "__Host-x=v; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=60"
        );
        assert!(clear("__Host-x").ends_with("; Max-Age=0"));
        assert_eq!(find("a=1; __Host-x=v ;b=2", "__Host-x"), Some("v"));
        assert_eq!(find("a=1; __Host-x=v; __Host-x=w", "__Host-x"), Some("v"));
        assert_eq!(find("x=1; __Host-xy=2", "__Host-x"), None);
        assert_eq!(find("", "__Host-x"), None);
    }
}
