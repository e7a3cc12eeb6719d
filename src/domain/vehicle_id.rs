use std::fmt;

/// A vehicle's primary key: a positive 32-bit integer, the type of `vehicles.id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VehicleId(i32);

/// Why a path segment is not a vehicle id. The text is shown to clients as the problem detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VehicleIdError {
    #[error("the vehicle id is empty; expected a positive integer such as 3")]
    Empty,
    #[error(
        "the vehicle id must be written in decimal digits only (no sign, spaces or leading zeros), such as 3"
    )]
    NotCanonicalDecimal,
    #[error("the vehicle id must be between 1 and 2147483647")]
    OutOfRange,
}

impl VehicleId {
    pub const MAX: i32 = i32::MAX;

    /// Accepts only the canonical decimal spelling, so that one vehicle has one URL: responses
    /// are `Cache-Control: public`, and browser or CDN caches key on the URL, not on our parse.
    pub fn parse(raw: &str) -> Result<Self, VehicleIdError> {
        let bytes = raw.as_bytes();
        if bytes.is_empty() {
            return Err(VehicleIdError::Empty);
        }
        if !bytes.iter().all(u8::is_ascii_digit) || bytes[0] == b'0' && bytes.len() > 1 {
            return Err(VehicleIdError::NotCanonicalDecimal);
        }
        // Ten digits is the width of i32::MAX; anything longer cannot fit and must not overflow.
        if bytes.len() > 10 {
            return Err(VehicleIdError::OutOfRange);
        }
        let value: i64 = raw
            .parse()
            .map_err(|_| VehicleIdError::NotCanonicalDecimal)?;
        if value < 1 || value > i64::from(Self::MAX) {
            return Err(VehicleIdError::OutOfRange);
        }
        Ok(Self(value as i32))
    }

    /// From a JSON integer, say: 1 to 2147483647.
    pub fn from_i64(value: i64) -> Result<Self, VehicleIdError> {
        i32::try_from(value)
            .ok()
            .filter(|v| *v >= 1)
            .map(Self)
            .ok_or(VehicleIdError::OutOfRange)
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

impl fmt::Display for VehicleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_decimal_ids_in_range_are_accepted() {
        for (raw, expected) in [("1", 1), ("3", 3), ("42", 42), ("2147483647", i32::MAX)] {
            assert_eq!(
                VehicleId::parse(raw).map(VehicleId::get),
                Ok(expected),
                "{raw}"
            );
        }
    }

    #[test]
    fn everything_else_is_rejected_with_a_reason() {
        use VehicleIdError::*;
        let cases = [
            ("", Empty),
            ("0", OutOfRange),
            ("2147483648", OutOfRange),
            ("99999999999", OutOfRange),
            ("99999999999999999999999999", OutOfRange),
            ("-1", NotCanonicalDecimal),
            ("+1", NotCanonicalDecimal),
            ("007", NotCanonicalDecimal),
            ("00", NotCanonicalDecimal),
            (" 3", NotCanonicalDecimal),
            ("3 ", NotCanonicalDecimal),
            ("3.0", NotCanonicalDecimal),
            ("1e3", NotCanonicalDecimal),
            ("abc", NotCanonicalDecimal),
            ("٣", NotCanonicalDecimal),
        ];
        for (raw, expected) in cases {
            assert_eq!(VehicleId::parse(raw), Err(expected), "{raw:?}");
        }
    }

    proptest! {
        #[test]
        fn any_string_is_rejected_or_is_the_canonical_spelling_of_its_id(raw in "\\PC*|[0-9+-]{0,12}") {
            if let Ok(id) = VehicleId::parse(&raw) {
                prop_assert_eq!(id.to_string(), raw);
            }
        }

        #[test]
        fn every_positive_i32_round_trips_through_its_decimal_spelling(n in 1..=i32::MAX) {
            prop_assert_eq!(VehicleId::parse(&n.to_string()).map(VehicleId::get), Ok(n));
        }
    }
}
