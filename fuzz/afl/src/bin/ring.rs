//! AFL++ harness of target `ring` (see `xfuse_fuzz::ring`).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        xfuse_fuzz::ring::ring(data);
    });
}
