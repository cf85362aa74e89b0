//! Invariant 3 under crashes, replicas and injected faults: every due period ends with
//! exactly one successful payment at the simulator, and the ledger matches it one to one.
