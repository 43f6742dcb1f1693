#[courier::service]
pub trait Calc {
    async fn add(&self, a: i32, b: i32) -> i32;
    async fn add_acked(&self, a: i32) -> i32;
}

fn main() {}
