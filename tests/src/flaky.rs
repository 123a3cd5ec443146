//! A flaky echo server, like the connman seed's `runTest.sh`.
