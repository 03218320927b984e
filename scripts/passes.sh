# The passes of the test suite, sourced by scripts/test.sh (once each) and
# scripts/stress-tests.sh (many times), so both run the same thing.
#
# Each function takes a runner command as its first argument and calls it
# with `ENV=VALUE... cargo test ARGS`; the runner runs it (through `env`)
# and records the output.

# Unit tests beside the code, every crate.
unit_pass() {
    "$1" cargo test --locked --workspace --lib --bins
}

# The integration suites (daemon/tests, xfuse/tests, ...) on the default
# transport, `dev`, including the virtio-fs tests that boot a guest (once:
# they do not use the host's transport).
integration_dev_pass() {
    "$1" cargo test --locked --workspace --test '*'
}

# The integration suite and pjdfstest again on the rings, then on the rings
# with FUSE passthrough (needs enable_uring, which scripts/setup.sh turns
# on), then the POSIX suites with long timeouts for hot inodes (the adaptive
# cache policy, promoting every 50 ms so short tests see long timeouts).
# The VM tests (vm_*) are left out: virtio-fs does not use the host's FUSE
# transport, so they would repeat the default pass unchanged; transports.rs
# is left out of the runs with XFUSE_TEST_ARGS: its tests pin their own
# flags.
integration_other_passes() {
    "$1" XFUSE_TEST_TRANSPORT=uring cargo test --locked -p xfused --test '*' -- --skip vm_
    "$1" XFUSE_TEST_TRANSPORT=uring XFUSE_TEST_ARGS=--passthrough cargo test --locked -p xfused \
        --test posix_dev --test round_trip --test fault --test scale --test pjdfstest --test adaptive \
        --test permissions --test suid --test file_flags
    "$1" XFUSE_TEST_ARGS="--cache-policy adaptive --cache-refresh-ms 50" cargo test --locked -p xfused \
        --test posix_dev --test round_trip --test pjdfstest --test permissions --test suid
}
