# The passes of the test suite, sourced by scripts/test.sh (once each) and
# scripts/stress-tests.sh (many times), so both run the same thing.
#
# Each function takes a runner command as its first argument and calls it
# with `ENV=VALUE... cargo test ARGS`; the runner runs it (through `env`)
# and records the output.
#
# Every pass builds with the cargo feature `rdma` (the verbs backend and
# its unit tests, and daemon/tests/rdma_guest.rs, which boots soft-RoCE in
# a guest): one build for all passes. The feature changes nothing unless
# --data-transport asks for RDMA.

# Unit tests beside the code, every crate.
unit_pass() {
    "$1" cargo test --locked --workspace --features xfused/rdma --lib --bins
}

# The integration suites (daemon/tests, xfuse/tests, ...) on the default
# transport, `dev`, including the tests that boot a guest (once: they do
# not use the host's transport): virtio-fs, and the RDMA data path.
integration_dev_pass() {
    "$1" cargo test --locked --workspace --features xfused/rdma --test '*'
}

# The integration suite and pjdfstest again on the rings, then on the rings
# with FUSE passthrough (needs enable_uring, which scripts/setup.sh turns
# on), then the POSIX suites with long timeouts for hot inodes (the adaptive
# cache policy, promoting every 50 ms so short tests see long timeouts).
# The VM tests (vm_*, and the RDMA guest's *soft_roce*) are left out:
# neither uses the host's FUSE transport, so they would repeat the default
# pass unchanged; transports.rs
# is left out of the runs with XFUSE_TEST_ARGS: its tests pin their own
# flags.
integration_other_passes() {
    "$1" XFUSE_TEST_TRANSPORT=uring cargo test --locked -p xfused --features rdma --test '*' -- --skip vm_ --skip soft_roce
    "$1" XFUSE_TEST_TRANSPORT=uring XFUSE_TEST_ARGS=--passthrough cargo test --locked -p xfused --features rdma \
        --test posix_dev --test round_trip --test fault --test scale --test pjdfstest --test adaptive \
        --test permissions --test suid --test file_flags
    "$1" XFUSE_TEST_ARGS="--cache-policy adaptive --cache-refresh-ms 50" cargo test --locked -p xfused --features rdma \
        --test posix_dev --test round_trip --test pjdfstest --test permissions --test suid
}
