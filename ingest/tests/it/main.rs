//! Integration tests of the ingest crate: one binary, one module per area.

mod import;
mod unavailable;
