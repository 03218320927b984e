//! AFL++ harness of target `service` (see `xfuse_fuzz::service`).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        xfuse_fuzz::service::service(data);
    });
}
