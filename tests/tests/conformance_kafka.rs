//! The event-log conformance suite on the Kafka backend, against a real
//! Kafka-protocol broker each test starts on loopback.

mailflow_tests::conformance_suite!(mailflow_tests::logs::TestLog::kafka());
