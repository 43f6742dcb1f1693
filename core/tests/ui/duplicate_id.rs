#[courier::service]
pub trait Calc {
    #[courier(id = 7)]
    async fn add(&self, a: i32, b: i32) -> i32;
    #[courier(id = 7)]
    async fn sub(&self, a: i32, b: i32) -> i32;
}

fn main() {}
