//! Integration tests of the matching crate (one binary, modules per area).

mod batch;
mod live;
