//! Members of a group: anything that takes messages and can be closed.
