//! What the `podflow` and `podflow-agent` binaries share: the agent's flags, the runtime
//! and logging set-up. Not an API: the binaries are the product.

pub mod cli;
