//! Synthetic customers (placeholder).
