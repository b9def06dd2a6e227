//! No code: this crate exists for its `Cargo.toml`, which asks for the features that
//! `cargo test --workspace` builds some third-party crates with.
//!
//! Cargo resolves features for the packages it is asked to build, so `cargo test -p <member>` builds a
//! crate that several members use with only the features that member's dependencies turn on. A smaller
//! feature set is another build of that crate, and of everything above it: burn, wgpu and libp2p
//! included, minutes of compiling that `cargo test --workspace` had already done. `gradswarm-core`
//! depends on this crate on x86_64 Linux and every member with native code depends on core, so their
//! graphs hold these requests and build each listed crate exactly as the whole workspace does. None of
//! them adds a feature to `cargo test --workspace`: each entry names only features it already turns on
//! (`cargo tree --workspace -e features` is the same with this crate as without it). `cargo build` (no
//! dev-dependencies) gets them too, ciborium's `default` and either's `use_std` among them, which only
//! criterion (a dev-dependency) turns on: so a plain build now shares every third-party crate with the
//! test build.
//!
//! `[dependencies]` pins crates as the targets are built; `[build-dependencies]` pins the copies built
//! for build scripts and proc-macros (cargo resolves those features apart), with no build script here.
//!
//! After a dependency change, re-check with `scripts/feature-pins-check` (it compiles nothing): it
//! lists, per member, the crates `cargo test -p <member>` would build with other features than
//! `cargo test --workspace` and what would be rebuilt because of them; add (or drop) entries here
//! until it reports none.
