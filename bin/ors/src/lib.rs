//! The `ors` binary's building blocks that other programs of this workspace reuse (the
//! conformance runner): loading documents from disk for the in-process host.

pub mod files;
