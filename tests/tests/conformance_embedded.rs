//! The event-log conformance suite on the embedded backend.

mailflow_tests::conformance_suite!(mailflow_tests::logs::TestLog::embedded());
