//! Integration tests of the bus crate (one test binary): the conformance suite
//! against every implementation, and Kafka-specific behaviour.

mod embedded;
mod kafka;
