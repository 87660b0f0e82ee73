//! What ovl's tests (`ovl-tests`) and its fuzz targets (`fuzz/`, a workspace of its own) share,
//! so that neither writes it a second time:
//!
//! - [`frames`], the property every frame decoder must have (the fuzz targets check it on
//!   arbitrary bytes, the tests replay it over the committed corpus on stable Rust);
//! - [`corpus`], the generator of the malformed-frame corpus (`tests/corpus/frames`) and of
//!   the fuzz targets' seeds (`fuzz/corpus/<target>`);
//! - [`Rng`], the seeded pseudo-random generator behind the corpus and the load tests.
//!
//! It does no I/O: writing and comparing the corpus files is the tests' job.

pub mod corpus;
pub mod frames;
mod rng;

pub use rng::Rng;
