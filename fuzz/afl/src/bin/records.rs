//! AFL++ harness of target `records` (see `xfuse_fuzz::records`).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        xfuse_fuzz::records::records(data);
    });
}
