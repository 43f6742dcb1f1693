#[courier::service]
pub trait Calc {
    // The id `sub` derives from its name.
    #[courier(id = 0xdc4e3915)]
    async fn add(&self, a: i32, b: i32) -> i32;
    async fn sub(&self, a: i32, b: i32) -> i32;
}

fn main() {}
