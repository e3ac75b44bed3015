//! OperationOutcome: how FHIR says what was wrong. Issues name the entry, the element
//! (FHIRPath-like `Appointment.start`) and the rule, never a patient value.

use serde_json::{Value, json};

/// The issue's severity (FHIR `issue-severity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Information,
}

impl Severity {
    /// The FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }
}

/// One problem with an input (FHIR `OperationOutcome.issue`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    /// FHIR `issue-type`: `structure`, `required`, `value`, `invalid`, `not-supported`,
    /// `transient`, `processing`.
    pub code: &'static str,
    /// What is wrong, with no patient value in it.
    pub diagnostics: String,
    /// Where: `Bundle.entry[3].resource` or `Appointment.start`.
    pub expression: Option<String>,
}

impl Issue {
    /// An error issue.
    pub fn error(
        code: &'static str,
        diagnostics: impl Into<String>,
        expression: Option<String>,
    ) -> Self {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression,
        }
    }
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.expression {
            Some(e) => write!(f, "{} ({}): {}", e, self.code, self.diagnostics),
            None => write!(f, "({}): {}", self.code, self.diagnostics),
        }
    }
}

/// An OperationOutcome resource listing `issues` (an "all ok" information issue when empty).
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = if issues.is_empty() {
        vec![json!({"severity": "information", "code": "informational", "diagnostics": "accepted"})]
    } else {
        issues
            .iter()
            .map(|i| {
                let mut v = json!({
                    "severity": i.severity.as_str(),
                    "code": i.code,
                    "diagnostics": i.diagnostics,
                });
                if let Some(e) = &i.expression {
                    v["expression"] = json!([e]);
                }
                v
            })
            .collect()
    };
    json!({"resourceType": "OperationOutcome", "issue": issues})
}
