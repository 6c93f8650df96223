//! End-to-end tests of the whole `crm` binary: real processes, real HTTP, temp data dirs.

mod channels;
mod deploy;
mod harness;
mod identity;
mod import;
mod kafka;
mod spine;
