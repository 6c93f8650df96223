//! Integration tests of the `store` crate (one test binary, one module per backend).

mod embedded;
mod kurrent;
