//! AFL++ harness of target `virtio` (see `xfuse_fuzz::virtio`).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        xfuse_fuzz::virtio::virtio(data);
    });
}
