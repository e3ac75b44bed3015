//! Typed protected health information.
//!
//! Patient data is wrapped in [`Phi`] from the moment a connector reads it. `Debug` and `Display` print
//! `<redacted>`, so a stray `{:?}` in a log line, a panic message or an error string cannot leak it. The
//! only way to read the value is [`Phi::expose`], which is easy to grep for and to review.

use std::fmt;

/// A value that is protected health information. Formatting it never reveals it.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Phi<T>(T);

impl<T> Phi<T> {
    /// Wraps a value read from a patient record.
    pub fn new(value: T) -> Self {
        Phi(value)
    }

    /// Reads the protected value. Every call site is a place where PHI leaves its wrapper: keep them few
    /// and never pass the result to a log, metric or error.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Consumes the wrapper, returning the protected value (same rules as [`Phi::expose`]).
    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl<T> From<T> for Phi<T> {
    fn from(value: T) -> Self {
        Phi(value)
    }
}

impl<T> fmt::Debug for Phi<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Phi<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
// PHI: tests read values back to check them.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let canary = Phi::new("CANARY-Zebulon".to_string());
        assert_eq!(format!("{canary:?}"), "<redacted>");
        assert_eq!(format!("{canary}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&canary)), "Some(<redacted>)");
        assert_eq!(canary.expose(), "CANARY-Zebulon");
    }
}
