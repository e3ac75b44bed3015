//! Root package: owns the end-to-end tests in `tests/`. The product lives in the workspace crates.
