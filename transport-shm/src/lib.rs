//! Shared-memory transport for Courier between processes on one machine (LRPC-style); not yet implemented.
