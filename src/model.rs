//! The service's vocabulary: suppliers, statuses, reasons and outcomes, with the exact
//! spellings the contract uses in the database, the CLI and the API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Generates `as_str`, `Display`, `FromStr` and `ALL` for a fieldless enum whose
/// wire spellings are given once, here, and nowhere else.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: stringify!($name), expected: &[$($text),+] }),
                }
            }
        }
    };
}

/// A string that is not one of an enum's spellings. Its message lists the allowed
/// values and never repeats the input (it may have been a token pasted in the wrong place).
#[derive(Debug, Clone, thiserror::Error)]
#[error("must be one of {}", expected.join(", "))]
pub struct UnknownValue {
    pub kind: &'static str,
    pub expected: &'static [&'static str],
}

wire_enum! {
    /// A GP clinical system supplier.
    Supplier { Emis => "emis", Tpp => "tpp", Vision => "vision", Microtest => "microtest" }
}

impl Supplier {
    /// Suppliers whose tokens can be checked over the network (Microtest's cannot).
    pub const CHECKABLE: &'static [Supplier] = &[Supplier::Emis, Supplier::Tpp, Supplier::Vision];
}

wire_enum! {
    /// A credential's standing, as RP backends read it.
    Status { Unchecked => "unchecked", Valid => "valid", Invalid => "invalid", Unsupported => "unsupported" }
}

wire_enum! {
    /// Why a credential is `invalid`.
    Reason {
        TokenRejected => "token_rejected",
        AccessRevoked => "access_revoked",
        NotRegistered => "not_registered",
        AccessRestricted => "access_restricted",
        RefreshExhausted => "refresh_exhausted",
    }
}

wire_enum! {
    /// What the last check of a credential came to (`last_outcome` in the status view).
    LastOutcome {
        Valid => "valid",
        Suspect => "suspect",
        Invalid => "invalid",
        Transient => "transient",
        PracticeUnavailable => "practice_unavailable",
        SupplierConfigError => "supplier_config_error",
        Held => "held",
        Skipped => "skipped",
    }
}

/// Reads an optional database text column into one of the enums above.
pub fn parse_opt<T: FromStr>(value: Option<&str>) -> Option<T> {
    value.and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in Supplier::ALL {
            assert_eq!(s.as_str().parse::<Supplier>().unwrap(), *s);
        }
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>().unwrap(), *r);
        }
        for o in LastOutcome::ALL {
            assert_eq!(o.as_str().parse::<LastOutcome>().unwrap(), *o);
        }
        let err = "EMIS".parse::<Supplier>().unwrap_err().to_string();
        assert_eq!(err, "must be one of emis, tpp, vision, microtest");
    }
}
