//! podflow inventory (in progress).
