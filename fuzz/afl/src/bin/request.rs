//! AFL++ harness of target `request` (see `xfuse_fuzz::request`).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        xfuse_fuzz::request::request(data);
    });
}
