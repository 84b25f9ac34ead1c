//! Tandem's event spine: envelope, outbox, bus backends and idempotent inbox
