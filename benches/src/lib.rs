//! Benchmarks for etch (see benches/README.md).
