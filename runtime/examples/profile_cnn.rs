//! Runs the small CNN many times (for profilers): `cargo run --release -p iocane-runtime --features std --example profile_cnn`.
fn main() {
    let blob = iocane_runtime::emit::random_cnn_s(1).emit();
    let model = iocane_runtime::Model::parse(&blob).unwrap();
    let px: Vec<u8> = (0..784).map(|i| (i * 37 % 256) as u8).collect();
    let mut arena = vec![0u8; model.arena_size()];
    let mut logits = [0i32; 10];
    let mut s = 0usize;
    for _ in 0..20000 {
        s += model.run(std::hint::black_box(&px), &mut arena, &mut logits).unwrap();
    }
    println!("{s}");
}
