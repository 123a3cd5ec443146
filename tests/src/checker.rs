//! The "nothing lost" checker of RELIABILITY.md.
