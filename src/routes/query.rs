//! What the routes' query strings share: named parameters each given at most once, and a page's
//! `limit`.

use crate::error::ApiError;

/// The values of `names` in the query string `raw`, in their order: each at most once (a 400
/// that names the one given twice); other parameters are ignored.
pub(super) fn params<const N: usize>(
    raw: &str,
    names: [&str; N],
) -> Result<[Option<String>; N], ApiError> {
    let mut values = [const { None }; N];
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        let Some(slot) = names.iter().position(|n| *n == name) else {
            continue;
        };
        if values[slot].replace(value.into_owned()).is_some() {
            return Err(ApiError::InvalidQuery(format!(
                "`{name}` is given more than once; give it once"
            )));
        }
    }
    Ok(values)
}

/// A page's `limit`: an integer from 1 to `max`, `default` when absent.
pub(super) fn limit(raw: Option<&str>, default: u16, max: u16) -> Result<u16, ApiError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    raw.parse::<u16>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::InvalidQuery(format!(
                "`limit` must be an integer from 1 to {max}, not {raw:?}"
            ))
        })
}
